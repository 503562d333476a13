r"""Checks of the options shared by the penalties and the regulariser (one function per rule).

Each raises ``TypeError`` for a wrong kind of object and ``ValueError`` for a wrong value, naming
what it received. The data checks (model, x, labels, logits) live in :mod:`.estimators.checks`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .estimators import METHODS
from .estimators.checks import as_model, check_input, check_output, real_number
from .estimators.steps import Step, check_step
from .ops.backends import BACKEND_NAMES
from .reduction import REDUCTIONS


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """``value`` must be one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_estimator(method: str, step: Step, backend: str) -> Step:
    """The estimator options: method, step (returned normalised) and head-op backend."""
    check_choice("method", method, METHODS)
    check_choice("backend", backend, BACKEND_NAMES)
    return check_step(step)


def check_weight(weight) -> float:
    """lambda: a finite real number >= 0 (Python, NumPy or 0-d tensor), as a float."""
    weight = real_number(weight, "weight")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
    return weight


def check_fraction(fraction) -> float:
    """The penalised share of each batch: a real number in (0, 1], as a float."""
    fraction = real_number(fraction, "fraction")
    if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return fraction


def check_generator(generator: Optional[torch.Generator], x: Optional[torch.Tensor] = None
                    ) -> Optional[torch.Generator]:
    """None or a ``torch.Generator``, on the device type of x when x is given."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if x is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device}, the inputs on {x.device}: rfd draws its signs "
                         "on the inputs' device")
    return generator


def check_data(model, x) -> nn.Module:
    """The model (returned as a module, see :func:`.estimators.checks.as_model`) and the input batch x."""
    check_input(x)
    return as_model(model)


def check_penalty_call(model, x, method: str, step: Step, reduction: str, logits: Optional[torch.Tensor],
                       backend: str, generator: Optional[torch.Generator] = None) -> Tuple[nn.Module, Step]:
    """Validate the arguments shared by the penalty functions; returns (model as a module, step)."""
    model = check_data(model, x)
    check_generator(generator, x)
    step = check_estimator(method, step, backend)
    check_choice("reduction", reduction, REDUCTIONS)
    if logits is not None:
        check_output(logits, x, name="logits")
    return model, step
