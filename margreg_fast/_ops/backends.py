"""Backend registry for the fused energy head: name -> implementation module (a :class:`Backend`)."""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Protocol, Tuple, runtime_checkable

import torch

from . import native, reference, triton_head


@runtime_checkable
class Backend(Protocol):
    """What a backend module provides, with the semantics of :mod:`margreg_fast._ops.reference`."""

    #: Whether ``forward`` raises ValueError for targets outside [0, C) (not ignore_index) itself.
    CHECKS_TARGET_RANGE: bool

    def is_available(self, device: torch.device) -> bool:
        """Whether it can run on tensors on ``device`` here."""

    def unavailable_reason(self, device: torch.device) -> str:
        """Why it cannot (and what to install or set)."""

    def forward(self, z0: torch.Tensor, z1: torch.Tensor, target: Optional[torch.Tensor],
                ignore_index: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(D, ce, stats): D and ce of shape (B,), stats (B, 4) = [m0, log s0, m1, log s1]."""

    def backward(self, z0: torch.Tensor, z1: torch.Tensor, target: Optional[torch.Tensor], ignore_index: int,
                 stats: torch.Tensor, grad_d: torch.Tensor, grad_ce: Optional[torch.Tensor]
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(dz0, dz1) in the logits' dtype, for the per-row gradients grad_d and grad_ce."""


BACKENDS: Dict[str, Backend] = {"torch": reference, "native": native, "triton": triton_head}
BACKEND_NAMES = ("auto",) + tuple(BACKENDS)


def resolve(name: str, device: torch.device) -> str:
    """Map a user-facing backend name to a concrete, available one for tensors on ``device``.

    ``auto`` picks triton on CUDA, native on CPU (compiled on first use), torch otherwise, with a
    warning giving the reason when it falls back (for native: the one NativeBuildWarning of its failed
    build). A backend asked for by name that cannot run raises ``RuntimeError`` saying why.
    """
    if not isinstance(name, str) or name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    if name == "auto":
        preferred = "triton" if device.type == "cuda" else "native" if device.type == "cpu" else "torch"
        module = BACKENDS[preferred]
        if module.is_available(device):
            return preferred
        if not getattr(module, "reported_unavailable", lambda device: False)(device):  # native warns once itself
            warnings.warn(f"backend 'auto' uses the torch reference for {device.type} tensors: "
                          f"{preferred} is unavailable ({module.unavailable_reason(device)})", stacklevel=3)
        return "torch"
    module = BACKENDS[name]
    if not module.is_available(device):
        raise RuntimeError(f"backend {name!r} is unavailable for {device} tensors: {module.unavailable_reason(device)}")
    return name


def available_backends(device: torch.device | str = "cpu") -> List[str]:
    """Names of the backends that can run on ``device`` here."""
    device = torch.device(device)
    return [name for name, module in BACKENDS.items() if module.is_available(device)]
