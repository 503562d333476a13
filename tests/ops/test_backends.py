"""The backend registry: every backend satisfies the Backend protocol; ``auto`` says when it falls back."""
import pytest
import torch

from margreg_fast._ops import backends, native


def test_every_backend_implements_the_protocol():
    for name, module in backends.BACKENDS.items():
        assert isinstance(module, backends.Backend), name


def test_auto_warns_with_the_reason_when_it_falls_back(monkeypatch):
    monkeypatch.setattr(native, "is_available", lambda device: False)
    with pytest.warns(UserWarning, match="native is unavailable"):
        assert backends.resolve("auto", torch.device("cpu")) == "torch"
