r"""The public layer's argument checks: every rule on what a user passes, written once.

The penalty functions, the regulariser and the experiment kit call these functions; no other module
repeats a rule. (The tensors that reach the fused head op are checked by the ops layer,
:mod:`margreg_fast.ops.validation`, whose class-index rule :func:`check_labels` reuses.) Every check
raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape or value) and
names what it received; a check that normalises its argument returns it.

* :func:`as_model` -- any callable is a model. A plain function (e.g. a ``functional_call`` lambda)
  is wrapped in an ``nn.Module`` with no submodules, so every estimator runs on it; the BatchNorm
  handling of :mod:`.passes` then has no modules to act on.
* :func:`check_input` / :func:`check_data` -- x is a floating tensor (B, ...) with at least one
  feature dimension (and the model a model).
* :func:`check_labels` -- y holds integer class indices (never truncated floats), one per sample
  of x (ignore_index allowed).
* :func:`check_output` -- the model returned logits of shape (B, C) (not (B, T, C), (B, C, 1, 1),
  a tuple or a dict).
* :func:`check_choice` -- an option is one of its names (method, backend, penalty, reduction).
* :func:`check_estimator_options` -- method and head-op backend.
* :func:`real_number`, :func:`check_weight`, :func:`check_step`, :func:`check_fraction` -- numbers
  (Python, NumPy or 0-d tensor) returned as floats; :func:`check_optional_flag` -- None or a bool;
  :func:`check_generator` -- a ``torch.Generator``.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..ops.backends import BACKEND_NAMES
from ..ops.validation import check_class_indices
from .defaults import AUTO, METHODS, Step


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


def check_data(model, x) -> nn.Module:
    """The model (returned as a module, see :func:`as_model`) and the input batch x."""
    check_input(x)
    return as_model(model)


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


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """``value`` must be one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_estimator_options(method: str, backend: str) -> None:
    """The estimator (one of :data:`.defaults.METHODS`) and the head op's backend name."""
    check_choice("method", method, METHODS)
    check_choice("backend", backend, BACKEND_NAMES)


def check_weight(weight) -> float:
    """lambda: a finite real number >= 0, as a float."""
    weight = real_number(weight, "weight")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
    return weight


def check_step(step: Step) -> Step:
    """A user step: ``"auto"``, or a positive finite real number returned as a float."""
    if isinstance(step, str):
        if step != AUTO:
            raise ValueError(f"step must be a positive float or {AUTO!r}, got {step!r}")
        return step
    step = real_number(step, f"step (a positive float or {AUTO!r})")
    if not (step > 0 and step < float("inf")):
        raise ValueError(f"step must be positive and finite, got {step!r}")
    return step


def check_fraction(fraction) -> float:
    """The penalised share of each batch: a real number in (0, 1], as a float."""
    fraction = real_number(fraction, "fraction")
    if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return fraction


def check_optional_flag(value, name: str) -> Optional[bool]:
    """None (decided by the library) or a bool; never a truthy stand-in such as 0, 1 or "yes"."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, got {_describe(value)}")
    return value


def check_generator(generator: Optional[torch.Generator], x: Optional[torch.Tensor] = None
                    ) -> Optional[torch.Generator]:
    """None (torch's global generator) or a ``torch.Generator``, on the device type of x when x is given."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if x is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device}, the inputs on {x.device}: rfd draws its signs "
                         "on the inputs' device")
    return generator
