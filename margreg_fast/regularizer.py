r"""Drop-in training objective: mean CE + weight * mean penalty, in one call.

Usage (a training loop changes by one line)::

    reg = MarginalDensityRegularizer(weight=1.0)
    loss, stats = reg(model, x, y)      # was: loss = F.cross_entropy(model(x), y)
    loss.backward(); optimizer.step()
    print(stats["ce"], stats["penalty"], stats["grad_norm"], stats["secant_ratio"])

The logits of x are computed once and serve both the CE and the penalty; for ``rfd`` and ``fd`` the
CE of those logits comes out of the same fused head pass as the finite difference. Every step the
regulariser feeds the estimator's secant ratio to a :class:`~margreg_fast.monitor.SecantMonitor`,
which warns once if the finite difference stops measuring the gradient, and at once if the penalty
diverges (see :mod:`.monitor`). A step synchronises with the device once: the statistics and the
monitor's two sums are stacked into one tensor and transferred together.

With ``fraction`` f < 1 the penalty is computed on a random subset of m = max(1, round(f B)) samples,
scaled so that its expectation, and so the expected parameter gradient, is fraction 1's at the same
weight (:mod:`.subsample`); the CE still covers the whole batch. How the batch goes through the model
depends on whether its forward couples the samples (``batch_coupled``; by default detected:
a train-mode BatchNorm or timm's EvoNorm-B couples them):

* **Coupled** (one forward of the whole batch): the CE's forward is the one ordinary train-mode forward
  of the B samples, through the model the caller passed; the subset's passes are probes of it, so
  train-mode BatchNorm normalises the subset with the whole batch's statistics (held from that
  forward) and the penalty keeps its one documented meaning. Cost on top of a plain step (F + B):
  about f (2F + B_x + 2B): the subset's forward at x cannot be the CE's, whose input gradient would
  take a backward through the whole batch.
* **Sample-wise** (the batch split in two): the subset's forward at x is its estimate's clean pass
  and serves both its CE and the penalty (as at f = 1), and the other B - m samples take a forward of
  their own for their CE. The CE is the same mean over the whole batch (sample i's logits do not
  depend on the others), and the cost on top of plain is about f (F + B_x + B), f times fraction 1's.
  Under DDP the subset's forward is the step's one DDP forward; the rest runs through the wrapped
  module. A train-mode batch-norm call in either forward raises (pass ``batch_coupled=True``).

Cost at f = 1: F + B_x + B on top of plain, its forward at x shared with the CE (F forward, B_x backward
to the input only, B training backward).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .estimators import DEFAULT_METHOD, DEFAULT_STEP, PENALTIES, Estimate, estimate
from .estimators.checks import (check_choice, check_data, check_estimator_options, check_fraction, check_generator,
                                check_labels, check_optional_flag, check_output, check_step, check_weight)
from .estimators.passes import ModelPasses, couples_batch, sample_wise_forward
from .estimators.steps import Step
from .monitor import DEFAULT_BAND, DEFAULT_WARMUP, DEFAULT_WINDOW, SecantMonitor, ratio_of_sums, secant_sums
from .ops import IGNORE_INDEX
from .reduction import reduce
from .subsample import complement, draw_subset, subset_mean

#: What ``penalty=`` accepts: the estimators' PENALTIES and "none" (plain cross-entropy).
PENALTY_OPTIONS = PENALTIES + ("none",)


class MarginalDensityRegularizer(nn.Module):
    """loss = mean CE(model(x), y) + weight * mean R(x); ``reg(model, x, y) -> (loss, stats)``.

    Args:
        weight: lambda >= 0 (a Python or NumPy number, or a 0-d tensor).
        method: estimator of R: ``"rfd"`` (default: exact value, randomly signed secant for the
            gradient), ``"exact"``, ``"jvp"``, ``"fd"`` or ``"central"`` (see :mod:`.estimators.core`).
        step: h of the finite differences (float > 0 or ``"auto"``, see :mod:`.estimators.steps`).
        penalty: ``"marginal"`` (||grad_x logsumexp f||^2, MDR), ``"conditional"`` (||grad_x CE||^2,
            IGR), ``"joint"`` (||grad_x f_y||^2) or ``"none"`` (plain CE).
        backend: implementation of the fused head op.
        fraction: share f in (0, 1] of each batch that the penalty is computed on (a random subset of
            max(1, round(f B)) samples, the penalty scaled to keep its expectation; see :mod:`.subsample`).
            The CE always covers the whole batch.
        batch_coupled: for ``fraction`` < 1, does the model's train-mode forward couple the samples of
            a batch? True: one forward of the whole batch, the subset's passes probes of it (BatchNorm's
            statistics are the whole batch's); False: the subset's forward serves its CE and the
            penalty, the rest of the batch takes a forward of its own (f (F + B_x + B) on top of plain
            instead of f (2F + B_x + 2B)); None (default): True when the model holds a train-mode
            BatchNorm or timm EvoNorm-B layer. A layer that couples samples by other means (batch-wise
            attention, a custom batch statistic) needs True.
        monitor_window, monitor_band, monitor_warmup: the :class:`~margreg_fast.monitor.SecantMonitor`'s settings.
        generator: a ``torch.Generator`` (on the inputs' device) for the random draws: the subset of
            ``fraction`` < 1 and ``rfd``'s signs; None draws them from torch's global generator.

    ``stats`` holds detached Python floats: ``ce`` (mean CE), ``penalty`` (mean R),
    ``grad_norm`` (mean ||grad_x S|| of the penalised quantity S) and ``secant_ratio``
    (sqrt(sum slope^2 / sum ||grad_x S||^2), 1 when the estimator measures the gradient); the last
    two are NaN for ``penalty="none"``.

    ``model`` is an ``nn.Module`` or any function of x returning (B, C) logits. Labels of -100 mark
    unlabelled samples, as in ``F.cross_entropy``: the CE and the conditional / joint penalties
    are 0 there and averaged over the labelled samples; the marginal penalty, which needs no
    label, is averaged over all samples.
    """

    def __init__(self, weight: float, method: str = DEFAULT_METHOD, step: Step = DEFAULT_STEP,
                 penalty: str = "marginal", backend: str = "auto", fraction: float = 1.0,
                 batch_coupled: Optional[bool] = None, monitor_window: int = DEFAULT_WINDOW,
                 monitor_band: Tuple[float, float] = DEFAULT_BAND, monitor_warmup: int = DEFAULT_WARMUP,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.generator = check_generator(generator)
        check_estimator_options(method, backend)
        self.weight, self.step = check_weight(weight), check_step(step)
        self.method, self.backend = method, backend
        self.fraction = check_fraction(fraction)
        self.batch_coupled = check_optional_flag(batch_coupled, "batch_coupled")
        self.penalty = check_choice("penalty", penalty, PENALTY_OPTIONS)
        self.monitor = SecantMonitor(method, monitor_window, monitor_band, monitor_warmup)

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, method={self.method!r}, step={self.step!r}, penalty={self.penalty!r}, "
                f"fraction={self.fraction}, batch_coupled={self.batch_coupled}")

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        model = check_data(model, x)
        check_generator(self.generator, x)
        y = check_labels(y, x)
        if self.penalty == "none":
            ce = F.cross_entropy(check_output(model(x), x), y)
            return ce, {"ce": ce.item(), "penalty": 0.0, "grad_norm": float("nan"), "secant_ratio": float("nan")}
        needs_label = self.penalty != "marginal"  # the marginal penalty needs no label
        if self.fraction == 1.0:
            est = self._estimate(model, x, y, with_ce=True)
            ce, est_y = reduce(est.ce, "mean", labels=y), y
            penalty = reduce(est.value, "mean", labels=y if needs_label else None)
        else:
            ce, est, est_y = self._subset_estimate(model, x, y)
            penalty = subset_mean(est.value, x.shape[0], labels=y if needs_label else None)
        grad_norm = reduce(est.grad_norm, "mean", labels=est_y if needs_label else None)
        loss = ce + self.weight * penalty
        means = torch.stack([t.detach().double() for t in (ce, penalty, grad_norm)])
        ce_v, penalty_v, grad_norm_v, slope_sq, grad_sq = torch.cat([means, secant_sums(est.slope, est.grad_norm)]).tolist()
        ratio = ratio_of_sums(slope_sq, grad_sq)
        self.monitor.update(ratio, penalty_v, grad_norm_v)
        return loss, {"ce": ce_v, "penalty": penalty_v, "grad_norm": grad_norm_v, "secant_ratio": ratio}

    def _subset_estimate(self, model, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, Estimate, torch.Tensor]:
        """(mean CE over the whole batch, the estimate on a drawn subset, the subset's labels)."""
        detected = couples_batch(model)
        if detected and self.batch_coupled is False:  # before any pass: a refused step changes no state
            raise ValueError("batch_coupled=False, but the model holds a train-mode BatchNorm (or timm EvoNorm-B) "
                             "layer, whose statistics couple the samples of a batch; leave batch_coupled=None")
        if detected or self.batch_coupled:
            passes = ModelPasses(model)
            ce = F.cross_entropy(check_output(passes.clean(x), x), y, ignore_index=IGNORE_INDEX)
            idx = draw_subset(x.shape[0], self.fraction, x.device, self.generator)
            return ce, self._estimate(model, x[idx], y[idx], passes=passes), y[idx]
        idx = draw_subset(x.shape[0], self.fraction, x.device, self.generator)
        rest = complement(idx, x.shape[0])
        ce_rest = None
        if rest.numel():  # the rest first: a batch-norm call it refuses has then changed no state
            x_rest = x[rest]
            ce_rest = F.cross_entropy(check_output(sample_wise_forward(model, x_rest), x_rest), y[rest],
                                      reduction="none", ignore_index=IGNORE_INDEX)
        est = self._estimate(model, x[idx], y[idx], with_ce=True)
        ce = reduce(est.ce if ce_rest is None else torch.cat([est.ce, ce_rest]), "mean", labels=y)
        return ce, est, y[idx]

    def _estimate(self, model, x: torch.Tensor, y: torch.Tensor, **options) -> Estimate:
        return estimate(model, x, y, penalty=self.penalty, method=self.method, step=self.step, backend=self.backend,
                        generator=self.generator, **options)
