"""Loader for the native C++ CPU kernel (csrc/energy_head.cpp), registered as torch.ops.margreg_fast.*."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

try:
    from .. import _C  # noqa: F401  (importing registers the ops)

    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as err:  # not built: `pip install --no-build-isolation -e .` builds it
    _IMPORT_ERROR = err


def is_available(device: torch.device) -> bool:
    return _IMPORT_ERROR is None and device.type == "cpu"


def unavailable_reason(device: torch.device) -> str:
    if _IMPORT_ERROR is not None:
        return f"the C++ extension is not built ({_IMPORT_ERROR}); run `pip install --no-build-isolation -e .`"
    return f"the native kernel runs on CPU tensors only, got {device}"


def forward(z0, z1, target, ignore_index) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.ops.margreg_fast.energy_head_forward(z0, z1, target, ignore_index)


def backward(z0, z1, target, ignore_index, stats, grad_d, grad_ce) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.margreg_fast.energy_head_backward(z0, z1, target, ignore_index, stats, grad_d, grad_ce)
