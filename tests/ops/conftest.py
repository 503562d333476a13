import os

import pytest
import torch

from margreg_fast._ops import backends, native


@pytest.fixture(scope="session", autouse=True)
def native_kernel_loaded():
    """Compile (first use) and load the native kernel before any test calls torch.ops.margreg_fast.* directly;
    test_native.py's first test fails, with the reason, when it cannot be."""
    native.is_available(torch.device("cpu"))


def _cpu_backends():
    names = ["torch", "native"]
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        names.append("triton")
    return names


@pytest.fixture(params=_cpu_backends())
def backend(request):
    """Every backend that must run here: torch, native (CI builds it), triton (interpreter in CI)."""
    name = request.param
    device = torch.device("cuda" if name == "triton" and torch.cuda.is_available() else "cpu")
    assert backends.BACKENDS[name].is_available(device), backends.BACKENDS[name].unavailable_reason(device)
    return name, device
