r"""An opt-in audit of the direction of the penalty's parameter gradient.

The secant monitor (:mod:`._monitor`) watches a magnitude, sigma / ||g||; a finite difference can keep
that ratio near 1 while its parameter gradient -- what training follows -- points elsewhere (under
bf16 passes the cosine with fp32 exact fell to 0.05-0.38 on real nets while the ratio stayed in
[0.73, 1.02]). The audit measures the direction itself, on a few samples:

    cosine = <grad_theta mean R_est, grad_theta mean R_ref> / (||.|| ||.||)

with R_est the training estimator (as configured: estimator, step, autocast state) and R_ref ``exact``
in fp32 (autocast off), or ``central`` in fp32 where exact is refused (ops without a double
backward, compiled or FSDP2 models). Both run on the first ``samples`` samples of the step's batch,
as probes of one capture pass (:meth:`~._estimators.passes.ModelPasses.capture`), so both use the same
held batch statistics and random masks, no running statistic moves, and torch's generators are put
back afterwards: the audit leaves training's state and random stream as they were. Parameter
gradients are computed with ``torch.autograd.grad``, so ``.grad`` is untouched.

Cost per audited step: one forward of ``samples`` samples, the estimator's passes and exact's (a
double backward) on them; amortised over ``audit_every`` steps (measured:
``benchmarks/results/estimator_audit.md``).

:class:`DirectionAudit` keeps the schedule and warns once (:class:`GradientDirectionWarning`) when a
cosine falls below ``threshold``, naming the likely cause.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import torch
from torch import nn

from ._estimators import ModelPasses, UnsupportedEstimatorError, estimate
from ._estimators.core import autocast_device, penalty_precision
from ._estimators.passes import _unwrapped
from ._estimators.registry import ESTIMATORS
from ._monitor import user_stacklevel

#: Below this cosine the audit warns (at init, fp32, the default's cosine with exact is 0.84-0.999 on
#: the smooth timm nets of ``benchmarks/results/estimator_autocast.md``; 0.5 flags a lost direction).
DEFAULT_THRESHOLD = 0.5
DEFAULT_SAMPLES = 8


class GradientDirectionWarning(UserWarning):
    """The estimator's parameter gradient of the penalty points away from the exact one (the audit)."""


def _parameter_gradient(params, value: torch.Tensor, retain: bool = False) -> torch.Tensor:
    grads = torch.autograd.grad(value, params, allow_unused=True, retain_graph=retain)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten().double() for p, g in zip(params, grads)])


def audit_cosine(model, x: torch.Tensor, target: Optional[torch.Tensor], *, penalty_kind: str, estimator: str, step,
                 backend: str = "auto", samples: int = DEFAULT_SAMPLES) -> Tuple[float, str]:
    """(cosine of ``estimator``'s parameter gradient of the mean penalty with the fp32 reference's, the
    reference's name) on the first ``samples`` samples of x (see the module docstring)."""
    inner = _unwrapped(model)
    params = [p for p in inner.parameters() if p.requires_grad] if isinstance(inner, nn.Module) else []
    if not params:
        return float("nan"), "none"
    xs = x[:samples].detach()
    ts = None if target is None else target[:samples]
    devices = [xs.device] if xs.device.type != "cpu" else []
    with torch.random.fork_rng(devices=devices, device_type=xs.device.type):
        passes = ModelPasses(inner)
        device_type = autocast_device(xs)
        with torch.enable_grad(), penalty_precision(device_type):
            passes.capture(xs)  # fp32 batch statistics, as the training estimate's under autocast
        est = estimate(inner, xs, ts, penalty_kind=penalty_kind, estimator=estimator, step=step, backend=backend, passes=passes)
        g_est = _parameter_gradient(params, est.value.float().mean(), retain=True)  # the capture's graph serves both
        reference = "exact"
        with penalty_precision(device_type):
            try:
                ref = estimate(inner, xs, ts, penalty_kind=penalty_kind, estimator="exact", step=step, backend=backend,
                               passes=passes)
            except UnsupportedEstimatorError:
                reference = "central"
                ref = estimate(inner, xs, ts, penalty_kind=penalty_kind, estimator="central", step="auto", backend=backend,
                               passes=passes)
            g_ref = _parameter_gradient(params, ref.value.mean())
    denominator = (g_est.norm() * g_ref.norm()).item()
    return ((g_est @ g_ref).item() / denominator if denominator > 0 else float("nan")), reference


class DirectionAudit:
    """Runs :func:`audit_cosine` every ``every`` steps and warns once when the cosine is below ``threshold``."""

    def __init__(self, every: int, estimator: str, threshold: float = DEFAULT_THRESHOLD,
                 samples: int = DEFAULT_SAMPLES) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"audit_every must be a positive int or None, got {every!r}")
        self.every, self.estimator, self.threshold, self.samples = every, estimator, threshold, samples
        self.steps, self.warned = 0, False

    def due(self) -> bool:
        """Count one step; is it an audited one (steps 1, 1 + every, ...)?"""
        self.steps += 1
        return (self.steps - 1) % self.every == 0

    def check(self, cosine: float, reference: str, secant_ratio: float, autocast: bool) -> None:
        if self.warned or not math.isfinite(cosine) or cosine >= self.threshold:
            return
        self.warned = True
        entry = ESTIMATORS[self.estimator]
        if autocast:
            cause = ("the step ran under autocast: the penalty's passes run in fp32 by default; if they were made "
                     "to run in the autocast dtype, its rounding swamps the finite difference")
        elif 0.8 <= secant_ratio <= 1.25:
            cause = ("the secant measures ||g|| (ratio {:.2f}) yet its parameter gradient differs: kinks (ReLU, "
                     "max-pool ties) that the probe crosses, or a step h too large for the model's curvature "
                     "(pass a smaller step=)".format(secant_ratio))
        else:
            cause = (f"the secant ratio is {secant_ratio:.2f}: the probe leaves the range where a secant measures a "
                     "slope (pass a smaller step=)")
        fix = "" if entry.exact_gradient else " estimator='exact' (or 'jvp') follows the exact gradient where the model supports it."
        warnings.warn(
            f"margreg_fast: at step {self.steps} the {self.estimator!r} estimator's parameter gradient of the penalty "
            f"had cosine {cosine:.3f} with fp32 {reference}'s (below {self.threshold:g}) on {self.samples} samples: "
            f"training does not follow the penalty's gradient. Likely cause: {cause}.{fix}",
            GradientDirectionWarning, stacklevel=user_stacklevel())
