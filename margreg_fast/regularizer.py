r"""Drop-in training objective: mean CE + weight * mean penalty, in one call.

Usage (a training loop changes by one line)::

    reg = MarginalDensityRegularizer(weight=1.0, method="fd", step=1e-2)
    loss, stats = reg(model, x, y)      # was: loss = F.cross_entropy(model(x), y)
    loss.backward(); optimizer.step()
    print(stats["ce"], stats["penalty"], stats["grad_norm"])

The logits of x are computed once and serve both the CE and the penalty; for marginal ``fd`` the
CE of those logits comes out of the same fused head pass as the finite difference.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .arguments import check_choice, check_data, check_estimator, check_weight
from .estimators import estimate
from .estimators.checks import check_labels, check_output
from .estimators.steps import Step
from .reduction import reduce

PENALTIES = ("marginal", "conditional", "joint", "none")


class MarginalDensityRegularizer(nn.Module):
    """loss = mean CE(model(x), y) + weight * mean R(x); ``reg(model, x, y) -> (loss, stats)``.

    Args:
        weight: lambda >= 0 (a Python or NumPy number, or a 0-d tensor).
        method: estimator of R: ``"exact"``, ``"jvp"``, ``"fd"`` (default) or ``"central"``.
        step: h for fd / central (float > 0 or ``"auto"``).
        penalty: ``"marginal"`` (||grad_x logsumexp f||^2, MDR), ``"conditional"`` (||grad_x CE||^2,
            IGR), ``"joint"`` (||grad_x f_y||^2) or ``"none"`` (plain CE).
        backend: implementation of the fused head op.

    ``stats`` holds detached Python floats: ``ce`` (mean CE), ``penalty`` (mean R) and
    ``grad_norm`` (mean ||grad_x S|| of the penalised quantity S; NaN for ``penalty="none"``).

    ``model`` is an ``nn.Module`` or any function of x returning (B, C) logits. Labels of -100 mark
    unlabelled samples, as in ``F.cross_entropy``: the CE and the conditional / joint penalties
    are 0 there and averaged over the labelled samples; the marginal penalty, which needs no
    label, is averaged over all samples.
    """

    def __init__(self, weight: float, method: str = "fd", step: Step = 1e-2, penalty: str = "marginal",
                 backend: str = "auto") -> None:
        super().__init__()
        self.weight, self.step = check_weight(weight), check_estimator(method, step, backend)
        self.method, self.backend = method, backend
        self.penalty = check_choice("penalty", penalty, PENALTIES)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, method={self.method!r}, step={self.step!r}, penalty={self.penalty!r}"

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        model = check_data(model, x)
        y = check_labels(y, x)
        if self.penalty == "none":
            ce = F.cross_entropy(check_output(model(x), x), y)
            return ce, {"ce": ce.item(), "penalty": 0.0, "grad_norm": float("nan")}
        est = estimate(model, x, y, quantity=self.penalty, method=self.method, step=self.step,
                       backend=self.backend, with_ce=True)
        penalty_labels = None if self.penalty == "marginal" else y  # the marginal penalty needs no label
        ce = reduce(est.ce, "mean", labels=y)
        penalty = reduce(est.penalty, "mean", labels=penalty_labels)
        grad_norm = reduce(est.grad_norm, "mean", labels=penalty_labels)
        loss = ce + self.weight * penalty
        return loss, {"ce": ce.item(), "penalty": penalty.item(), "grad_norm": grad_norm.item()}
