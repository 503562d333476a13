r"""Input-gradient penalties of a classifier, differentiable in its parameters.

* :func:`marginal_density_penalty` -- R(x) = ||grad_x logsumexp f(x)||^2, the squared score of the
  model's input density log p(x) = logsumexp f(x) - log Z (marginal density regularisation, MDR).
* :func:`input_gradient_penalty` -- the baselines ||grad_x CE(f(x), y)||^2 (``kind="conditional"``,
  input-gradient regularisation) and ||grad_x f(x)_y||^2 (``kind="joint"``).

Estimators (``method``; details and costs in :mod:`margreg_fast.estimators.core`): ``"exact"``
(double backprop), ``"jvp"`` (exact, forward mode over the reverse-mode input gradient),
``"fd"`` (forward difference along v = g / ||g||, error O(h), the fast path) and ``"central"``
(error O(h^2)). ``step`` is h for fd/central: a positive float, or ``"auto"``
(h_i = eps(logits dtype)^(1/2) RMS(x_i) for fd, ^(1/3) for central; see
:mod:`margreg_fast.estimators.steps`). The finite differences go through the fused head op
:func:`margreg_fast.energy_penalty` (``backend`` picks its implementation).

Example::

    x.requires_grad_(True)            # optional: lets the penalty reuse these logits' graph
    logits = model(x)
    loss = F.cross_entropy(logits, y) + lam * marginal_density_penalty(model, x, logits=logits)
    loss.backward()
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .estimators import DEFAULT_METHOD, DEFAULT_STEP, METHODS, estimate
from .estimators.steps import Step, check_step
from .ops.backends import BACKEND_NAMES

REDUCTIONS = ("mean", "sum", "none")
KINDS = ("conditional", "joint")


def check_common(model, x, method: str, step: Step, reduction: str, logits: Optional[torch.Tensor],
                 backend: str) -> None:
    """Validate the arguments shared by the penalties (raises TypeError / ValueError naming the problem)."""
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module), got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension and at least one feature dimension, got {tuple(x.shape)}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_step(step)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    if logits is not None:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"logits must have shape (batch={x.shape[0]}, classes), got "
                             f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")


def check_target(y, x: torch.Tensor) -> None:
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32) or y.shape != x.shape[:1]:
        raise ValueError(f"y must be an int64 tensor of class indices with shape ({x.shape[0]},), got "
                         f"{(y.dtype, tuple(y.shape)) if isinstance(y, torch.Tensor) else type(y).__name__}")


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def marginal_density_penalty(model: nn.Module, x: torch.Tensor, *, method: str = DEFAULT_METHOD, step: Step = DEFAULT_STEP,
                             reduction: str = "mean", logits: Optional[torch.Tensor] = None,
                             backend: str = "auto") -> torch.Tensor:
    """R(x) = ||grad_x logsumexp(model(x))||^2 per sample (``reduction="none"``), or its mean / sum.

    Args:
        model: the classifier, returning logits of shape (B, C). May be wrapped in DDP or compiled
            (``exact`` and ``jvp`` do not work on compiled models; they raise
            :class:`~margreg_fast.estimators.UnsupportedEstimatorError`).
        x: inputs (B, ...), any floating dtype.
        method: ``"exact"``, ``"jvp"``, ``"fd"`` or ``"central"``.
        step: h for fd / central, a positive float or ``"auto"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        logits: ``model(x)`` if already computed, to share it (e.g. with the CE). If ``x`` requires
            grad these logits' graph also gives grad_x; otherwise one probe forward does.
        backend: implementation of the fused head op (``"auto"``, ``"torch"``, ``"native"``, ``"triton"``).
    """
    check_common(model, x, method, step, reduction, logits, backend)
    est = estimate(model, x, None, quantity="marginal", method=method, step=step, logits=logits, backend=backend)
    return reduce(est.penalty, reduction)


def input_gradient_penalty(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, kind: str = "conditional",
                           method: str = "exact", step: Step = 1e-2, reduction: str = "mean",
                           logits: Optional[torch.Tensor] = None, backend: str = "auto") -> torch.Tensor:
    """Baselines: ||grad_x CE(model(x), y)||^2 (``kind="conditional"``) or ||grad_x model(x)_y||^2 (``"joint"``).

    Same estimators and arguments as :func:`marginal_density_penalty`; ``y`` holds int64 class indices (B,).
    """
    check_common(model, x, method, step, reduction, logits, backend)
    check_target(y, x)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    est = estimate(model, x, y.long(), quantity=kind, method=method, step=step, logits=logits, backend=backend)
    return reduce(est.penalty, reduction)
