r"""The public layer's argument checks: every rule on what a user passes, written once.

The penalty functions, the regulariser and the experiment kit call these functions; no other module
repeats a rule. (The tensors that reach the fused head op are checked by the ops layer,
:mod:`margreg_fast._ops.validation`, whose class-index rule :func:`check_labels` reuses.) Every check
raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape or value) and
names what it received; a check that normalises its argument returns it.

* :func:`as_model` -- any callable is a model. A plain function (e.g. a ``functional_call`` lambda)
  is wrapped in an ``nn.Module`` with no submodules, so every estimator runs on it; the BatchNorm
  handling of :mod:`.passes` then has no modules to act on.
* :func:`check_input` / :func:`check_data` -- x is a floating tensor (B, ...) with at least one
  feature dimension (and the model a model).
* :func:`check_labels` -- y holds integer class indices (never truncated floats), one per sample
  of x (ignore_index allowed).
* :class:`OutputModel` -- a model whose output is not the logits tensor (a Hugging Face
  ``ModelOutput``, timm's distillation tuple, a dict), read through the user's ``output=``.
* :func:`check_output` -- the model returned logits of shape (B, C) (not (B, T, C), (B, C, 1, 1),
  a tuple or a dict: the error names ``output=``).
* :func:`check_criterion` / :func:`check_loss` -- a user's ``criterion(logits, target)`` and the
  scalar it returns.
* :func:`check_choice` -- an option is one of its names (estimator, backend, penalty, reduction).
* :func:`check_estimator_options` -- estimator and head-op backend.
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

from .._ops.backends import BACKEND_NAMES
from .._ops.validation import check_class_indices
from .defaults import AUTO, ESTIMATOR_NAMES, Step


class FunctionModel(nn.Module):
    """An ``nn.Module`` calling a plain function: ``FunctionModel(f)(x) == f(x)``."""

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


class OutputModel(nn.Module):
    """``model`` read through ``output``: ``OutputModel(model, output)(x) == output(model(x))``.

    Every pass of an estimate (the clean forward and the probes at x + h v) goes through it, so each
    returns logits. ``model`` is registered as a submodule: its BatchNorm layers, DDP wrapper and
    compiled modules stay visible, and the probes unwrap a DDP model inside it (:mod:`.passes`).
    """

    def __init__(self, model: nn.Module, output: Callable) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.model(x))


def as_model(model, output: Optional[Callable] = None) -> nn.Module:
    """``model`` itself if it is an ``nn.Module``, a :class:`FunctionModel` around any other callable;
    with ``output`` (a callable taking the model's output to (B, C) logits) an :class:`OutputModel` around that."""
    if not isinstance(model, nn.Module):
        if not callable(model):
            raise TypeError(f"model must be callable (an nn.Module or a function of x), got {type(model).__name__}")
        model = FunctionModel(model)
    return model if check_output_function(output) is None else OutputModel(model, output)


def check_output_function(output) -> Optional[Callable]:
    """``output=``: None (the model returns the logits) or a callable taking the model's output to them."""
    if output is not None and not callable(output):
        raise TypeError(f"output must be None or a callable taking the model's output to (B, C) logits "
                        f"(e.g. lambda out: out.logits), got {type(output).__name__}")
    return output


def check_input(x) -> None:
    """x must be a floating-point tensor of shape (batch, features...)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension and at least one feature dimension, got shape {tuple(x.shape)}")


def check_data(model, x, output: Optional[Callable] = None) -> nn.Module:
    """The model (returned as a module reading its logits through ``output``, see :func:`as_model`) and the input batch x."""
    check_input(x)
    return as_model(model, output)


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
    if isinstance(value, dict):  # a Hugging Face ModelOutput is an OrderedDict
        return f"a {type(value).__name__} with keys {list(value.keys())}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: ({', '.join(_describe(v) for v in value)})"
    return f"a {type(value).__name__}"


#: How ``output=`` reads the logits of the common non-tensor outputs (the hint of :func:`check_output`'s error).
_OUTPUT_HINT = ("pass output= to read them from it: output=lambda out: out.logits (a Hugging Face ModelOutput), "
                "output=lambda out: out[0] (a tuple, e.g. timm's distilled models in training mode), "
                "output=lambda out: out['logits'] (a dict)")


MODEL_OUTPUT = "the model's output"


def check_output(z, x: torch.Tensor, name: str = MODEL_OUTPUT) -> torch.Tensor:
    """``z`` must be (B, C) logits for x: a floating-point tensor of shape (x.shape[0], C).

    Anything else raises (TypeError for a non-tensor, ValueError for a wrong shape); for the model's
    output the error points at ``output=``, the keyword that reads the logits from it."""
    wrong_type = not isinstance(z, torch.Tensor) or not z.is_floating_point()
    if wrong_type or z.dim() != 2 or z.shape[0] != x.shape[0]:
        hint = f". If the logits are inside the model's output, {_OUTPUT_HINT}" if name == MODEL_OUTPUT else ""
        raise (TypeError if wrong_type else ValueError)(
            f"{name} must be (B, C) logits, a floating-point tensor of shape (batch={x.shape[0]}, classes) "
            f"with one row per sample of x; got {_describe(z)}{hint}")
    return z


def check_criterion(criterion) -> None:
    """None (the default cross-entropy) or a callable ``criterion(logits, target)``."""
    if criterion is not None and not callable(criterion):
        raise TypeError(f"criterion must be None or a callable criterion(logits, target) returning a scalar loss, "
                        f"got {type(criterion).__name__}")


def check_loss(loss) -> torch.Tensor:
    """What a criterion returned: a scalar (one-element) floating-point tensor."""
    if not isinstance(loss, torch.Tensor) or not loss.is_floating_point() or loss.numel() != 1:
        raise ValueError(f"criterion(logits, target) must return a scalar loss (a one-element floating-point tensor: "
                         f"reduce it, e.g. reduction='mean'); got {_describe(loss)}")
    return loss.reshape(())


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


def check_estimator_options(estimator: str, backend: str) -> None:
    """The estimator (one of :data:`.defaults.ESTIMATOR_NAMES`) and the head op's backend name."""
    check_choice("estimator", estimator, ESTIMATOR_NAMES)
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
