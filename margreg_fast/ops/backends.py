"""Backend registry for the fused energy head: name -> implementation module.

Each backend module exposes ``CHECKS_TARGET_RANGE`` (whether its forward raises ValueError for
out-of-range targets itself), ``is_available(device) -> bool``, ``unavailable_reason(device) -> str``,
``forward(z0, z1, target, ignore_index) -> (D, ce, stats)`` and
``backward(z0, z1, target, ignore_index, stats, grad_d, grad_ce) -> (dz0, dz1)``
with the semantics of :mod:`margreg_fast.ops.reference`.
"""
from __future__ import annotations

from types import ModuleType
from typing import Dict, List

import torch

from . import native, reference, triton_head

BACKENDS: Dict[str, ModuleType] = {"torch": reference, "native": native, "triton": triton_head}
BACKEND_NAMES = ("auto",) + tuple(BACKENDS)


def resolve(name: str, device: torch.device) -> str:
    """Map a user-facing backend name to a concrete, available one for tensors on ``device``.

    ``auto`` picks triton on CUDA, native on CPU when the extension is built, torch otherwise.
    A backend asked for by name that cannot run raises ``RuntimeError`` saying why.
    """
    if not isinstance(name, str) or name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {name!r}")
    if name == "auto":
        preferred = "triton" if device.type == "cuda" else "native" if device.type == "cpu" else "torch"
        return preferred if BACKENDS[preferred].is_available(device) else "torch"
    module = BACKENDS[name]
    if not module.is_available(device):
        raise RuntimeError(f"backend {name!r} is unavailable for {device} tensors: {module.unavailable_reason(device)}")
    return name


def available_backends(device: torch.device | str = "cpu") -> List[str]:
    """Names of the backends that can run on ``device`` here."""
    device = torch.device(device)
    return [name for name, module in BACKENDS.items() if module.is_available(device)]
