"""Loader for the native C++ CPU kernel (csrc/energy_head.cpp), registered as torch.ops.margreg_fast.*.

Importing ``margreg_fast._C`` registers the two ops with torch.library (CPU kernels). The fake
(meta) implementations below give torch.compile their output shapes and dtypes, so a compiled
graph calls the ops without a graph break:

* ``energy_head_forward(z0, z1, target, ignore_index) -> (D, ce, stats)``: D and ce of shape (B,),
  stats (B, 4) = [m0, log s0, m1, log s1]; all float32 (float64 for float64 logits).
* ``energy_head_backward(z0, z1, target, ignore_index, stats, grad_d, grad_ce) -> (dz0, dz1)``:
  contiguous (B, C) gradients in the logits' dtype.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .validation import accumulation_dtype

try:
    from .. import _C  # noqa: F401  (importing registers the ops)

    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as err:  # not built: `pip install --no-build-isolation -e .` builds it
    _IMPORT_ERROR = err


#: The forward kernel raises ValueError for a target outside [0, C) that is not ignore_index, so the
#: Python-side range check (a reduction and two host reads per call) is skipped for this backend.
CHECKS_TARGET_RANGE = True


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


if _IMPORT_ERROR is None:

    @torch.library.register_fake("margreg_fast::energy_head_forward")
    def _forward_fake(z0, z1, target, ignore_index):
        acc = accumulation_dtype(z0.dtype)
        batch = z0.shape[0]
        return z0.new_empty((batch,), dtype=acc), z0.new_empty((batch,), dtype=acc), z0.new_empty((batch, 4), dtype=acc)

    @torch.library.register_fake("margreg_fast::energy_head_backward")
    def _backward_fake(z0, z1, target, ignore_index, stats, grad_d, grad_ce):
        return z0.new_empty(z0.shape), z1.new_empty(z1.shape)
