r"""What the model, its inputs, labels and outputs must look like: one check per rule.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape or
value) and names what it received. The penalties, the regulariser and the kit's attacks call these
functions; no other module repeats a rule.

* :func:`as_model` -- any callable is a model. A plain function (e.g. a ``functional_call`` lambda)
  is wrapped in an ``nn.Module`` with no submodules, so every estimator runs on it; the BatchNorm
  handling of :mod:`.passes` then has no modules to act on.
* :func:`check_input` -- x is a floating tensor (B, ...) with at least one feature dimension.
* :func:`check_labels` -- y holds integer class indices (never truncated floats; the rule is
  :func:`margreg_fast.ops.validation.check_class_indices`, shared with the head op), one per sample
  of x (ignore_index allowed).
* :func:`check_output` -- the model returned logits of shape (B, C) (not (B, T, C), (B, C, 1, 1),
  a tuple or a dict).
* :func:`real_number` -- a Python, NumPy or 0-d tensor real number as a float (weights, steps).
"""
from __future__ import annotations

import numbers
from typing import Callable

import torch
from torch import nn

from ..ops.validation import check_class_indices


class FunctionModel(nn.Module):
    """An ``nn.Module`` calling a plain function: ``FunctionModel(f)(x) == f(x)``."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


def as_model(model) -> nn.Module:
    """``model`` itself if it is an ``nn.Module``, a :class:`FunctionModel` around any other callable."""
    if isinstance(model, nn.Module):
        return model
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module or a function of x), got {type(model).__name__}")
    return FunctionModel(model)


def check_input(x) -> None:
    """x must be a floating-point tensor of shape (batch, features...)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension and at least one feature dimension, got shape {tuple(x.shape)}")


def check_labels(y, x: torch.Tensor, name: str = "y") -> torch.Tensor:
    """Integer class indices of shape (B,), B = x.shape[0]; returned as int64."""
    check_class_indices(y, name)
    if y.shape != x.shape[:1]:
        raise ValueError(
            f"{name} must hold one label per sample, shape ({x.shape[0]},), got shape {tuple(y.shape)}: the first "
            f"dimension of x (shape {tuple(x.shape)}) is the batch. A single sample needs a batch dimension (x[None]).")
    return y.long()


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"a {type(value).__name__}"


def check_output(z, x: torch.Tensor, name: str = "the model's output") -> torch.Tensor:
    """``z`` must be (B, C) logits for x: a floating-point tensor of shape (x.shape[0], C)."""
    wrong_type = not isinstance(z, torch.Tensor) or not z.is_floating_point()
    if wrong_type or z.dim() != 2 or z.shape[0] != x.shape[0]:
        raise (TypeError if wrong_type else ValueError)(
            f"{name} must be (B, C) logits, a floating-point tensor of shape (batch={x.shape[0]}, classes) "
            f"with one row per sample of x; got {_describe(z)}")
    return z


def real_number(value, name: str) -> float:
    """A real number (Python, NumPy scalar or 0-d real tensor, not bool) as a Python float."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex() and value.dtype != torch.bool:
        return float(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{name} must be a real number, got {_describe(value)}")
