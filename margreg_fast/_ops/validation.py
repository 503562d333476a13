"""The ops layer's checks: the tensors and options that reach the fused energy head op's kernels.

One function per rule; the public layer (:mod:`margreg_fast._estimators.checks`) checks what users
pass to the penalties and the regulariser and reuses :func:`check_class_indices` from here. Every
check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape, device or
value) naming the offending argument. Value checks that need the data (step positivity,
target range) are skipped while ``torch.compile`` traces, so they never cause a graph break; inside
:func:`deferred_target_checks` the target range check leaves its host read to the caller.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, List, NamedTuple, Optional, Union

import torch

#: A step h as the head op takes it: a Python number, a 0-d tensor or a tensor of shape (B,).
HeadStep = Union[float, int, torch.Tensor]
#: The label of an unlabelled row (``F.cross_entropy``'s default ignore_index), the one the whole
#: library uses.
IGNORE_INDEX = -100


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32 and half types, fp64 for fp64: the dtype of the per-sample outputs."""
    return torch.promote_types(dtype, torch.float32)


def check_logits(z0: torch.Tensor, z1: torch.Tensor) -> None:
    """z0 and z1: floating (B, C) tensors, C >= 1, of one shape, dtype and device."""
    for name, z in (("z0", z0), ("z1", z1)):
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if not z.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {z.dtype}")
        if z.dim() != 2:
            raise ValueError(f"{name} must be 2-D (batch, classes), got shape {tuple(z.shape)}")
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.device != z1.device:
        raise ValueError(f"z0 and z1 must be on the same device, got {z0.device} and {z1.device}")
    if z0.dtype != z1.dtype:
        raise TypeError(f"z0 and z1 must have the same dtype, got {z0.dtype} and {z1.dtype}")
    if z0.shape[1] == 0:
        raise ValueError("logits must have at least one class (got C = 0)")


def check_class_indices(y, name: str = "y") -> None:
    """``y`` must be a tensor of integer class indices (not float, complex or bool: never truncated)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of integer class indices, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")


def check_ignore_index(ignore_index) -> None:
    """ignore_index must be a Python int (not bool)."""
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__}")


def check_head_target(target: Optional[torch.Tensor], z0: torch.Tensor, ignore_index: int,
                      check_range: bool = True) -> Optional[torch.Tensor]:
    """Validate integer class targets of shape (B,); returns them as int64 on z0's device.

    ``check_range=False`` leaves the value check (every target in [0, C) or ignore_index) to a
    backend kernel that raises the same ValueError itself.
    """
    if target is None:
        return None
    check_class_indices(target, "target")
    if target.dim() != 1 or target.shape[0] != z0.shape[0]:
        raise ValueError(f"target must have shape ({z0.shape[0]},), got {tuple(target.shape)}")
    if target.device != z0.device:
        raise ValueError(f"target must be on the logits' device {z0.device}, got {target.device}")
    num_classes = z0.shape[1]
    if check_range and target.numel() and not torch.compiler.is_compiling():
        bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
        pending = _DEFERRED.get()
        if pending is not None:  # checked at the caller's one host transfer; no bad index reaches a kernel
            pending.append(DeferredTargetCheck(bad, target, num_classes, ignore_index))
            return torch.where(bad, ignore_index, target).long()
        DeferredTargetCheck(bad, target, num_classes, ignore_index).raise_if_bad(bool(bad.any()))
    return target.long()


class DeferredTargetCheck(NamedTuple):
    """A target range check whose host read is left to the caller (:func:`deferred_target_checks`)."""

    bad: torch.Tensor  #: (B,) bool on the device: out of [0, C) and not ignore_index
    target: torch.Tensor
    num_classes: int
    ignore_index: int

    def raise_if_bad(self, any_bad: bool) -> None:
        """Raise the range error if ``any_bad`` (the host value of ``bad.any()``); names the first bad index."""
        if any_bad:
            first = int(self.target[self.bad][0])  # the failure path: one more read, to name the index
            raise ValueError(f"target contains class index {first} outside [0, {self.num_classes}) "
                             f"(and not ignore_index={self.ignore_index})")


_DEFERRED: ContextVar[Optional[List[DeferredTargetCheck]]] = ContextVar("margreg_fast_deferred_target_checks",
                                                                        default=None)


@contextmanager
def deferred_target_checks() -> Iterator[List[DeferredTargetCheck]]:
    """Inside, head-op target range checks cost no host synchronisation: each records its (B,) flag of bad
    targets in the yielded list, and the kernels see bad targets as ``ignore_index``. The caller must
    read the flags on the host (with its own transfer) and call :meth:`DeferredTargetCheck.raise_if_bad`.
    The regulariser does, so that a step synchronises once on every backend."""
    pending: List[DeferredTargetCheck] = []
    token = _DEFERRED.set(pending)
    try:
        yield pending
    finally:
        _DEFERRED.reset(token)


def check_head_step(step: HeadStep, batch: int, device: torch.device) -> Union[float, torch.Tensor]:
    """A finite step h > 0: a Python number, a 0-d tensor or a tensor of shape (B,)."""
    if isinstance(step, bool) or not isinstance(step, (int, float, torch.Tensor)):
        raise TypeError(f"step must be a float or a tensor, got {type(step).__name__}")
    if isinstance(step, torch.Tensor):
        if not step.is_floating_point():
            raise TypeError(f"step tensor must be floating point, got {step.dtype}")
        if step.dim() > 1 or (step.dim() == 1 and step.shape[0] != batch):
            raise ValueError(f"step tensor must be a scalar or have shape ({batch},), got {tuple(step.shape)}")
        if step.device != device:
            raise ValueError(f"step must be on the logits' device {device}, got {step.device}")
        if step.numel() and not torch.compiler.is_compiling():
            if not bool(torch.isfinite(step).all()) or not bool((step > 0).all()):
                raise ValueError("step must be finite and > 0 for every sample")
        return step
    if not math.isfinite(step) or step <= 0:
        raise ValueError(f"step must be finite and > 0, got {step}")
    return float(step)
