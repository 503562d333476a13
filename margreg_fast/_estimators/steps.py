r"""The finite-difference direction v and step h.

Direction: v = g / ||g|| per sample, with the norm over all non-batch dimensions, detached. It is
computed as u = g / max|g|, v = u / ||u|| so that tiny gradients neither underflow nor blow up; a
sample with g = 0 gets v = 0 (and so x+ = x, D = 0, penalty 0, never NaN).

Step ``"auto"`` (the default): per sample, the smaller of a rounding bound and a curvature bound,

    h_i = min( r_i,  C / ||g_i|| ),

with ||g_i|| = ||grad_x S(x_i)||, known exactly (detached) from the backward that gives v, and r_i
the rounding bound below, a multiple of RMS(x_i) = sqrt(mean(x_i^2)) (1 where x_i = 0), the input's
scale. h is detached. It applies to the estimators that take a step (the registry's ``takes_step``,
:mod:`.registry`).

**The rounding bound** depends on what the secant feeds (the registry's ``exact_value``), with eps the
machine epsilon of the logits' dtype:

* an estimator whose *value* is the secant (``fd``, order p = 1; ``central``, p = 2) trades its
  value's truncation error ~ h^p against rounding ~ eps / h: r = eps^(1/2) RMS for fd and
  4 eps^(1/3) RMS for central (c = 4 as the rule had it before the curvature bound). A smaller step
  would cost central's value accuracy: on a small SDPA ViT whose ||g|| is 0.016, central's value at
  3.5e-4 RMS is 1% off exact's (tests/test_models_conditions.py holds it to 0.1%).
* ``rfd``, whose value is the exact ||g||^2 and whose secant feeds only the parameter gradient, takes
  r = eps^(1/2) RMS, the low end of the range that rounding allows: its parameter gradient keeps a
  cosine of 0.9997-1.0000 with exact's in fp32 from h = 2.3e-4 to 0.06 on smooth CNNs
  (``benchmarks/results/estimator_step_sweep.md``). ReLU nets decided it before the probes replayed
  the clean pass's activation patterns: a probe that crossed ReLU kinks measured an average of the
  pieces' slopes, not the slope at x, and RepVGG-A0 (plain ReLU, random init, dropout and drop-path,
  64 px) had its secant ratio far below 0.8 at 4.9e-3 RMS (eps^(1/3)) (the "old" columns of the table
  cited below) and inside [0.8, 1.25] at eps^(1/2) RMS.

**Kinks.** Every probe now computes ReLU, ReLU6 / hardtanh, leaky ReLU and max pooling on the clean
pass's linear piece (:mod:`.patterns`): along the probe S is smooth, S(x + h v) = S(x) + h ||g|| +
(h^2/2) v^T H v + O(h^3) with H the curvature of the smooth ops only (softmax head, held BatchNorm
scales, smooth activations), so the secant's error is O(h) at any step, kinks or not, and its
parameter gradient is exact's (the pattern constant, relu'' = 0) up to O(h). On the ReLU
EfficientNet the default's penalty gradient now has cosine 0.9998-1.0000 with exact's along an
exact-trained run, where it had -0.14..0.39 (``benchmarks/results/estimator_training_gradient.md``).
A compiled model's passes that stay compiled (no train-mode BatchNorm) are not replayed
(:mod:`.passes`), and there the old reasoning still holds.

**The curvature bound.** Along v, S(x + e v) = S(x) + e ||g|| + (e^2/2) v^T H v + ..., so a secant's
slope is ||g|| (1 + (h/2) v^T H v / ||g|| + ...). For the head alone, S = logsumexp(z) with z linear
in x, the curvature along v is the variance under softmax(z) of the logits' rates dz_k/de, while the
slope ||g|| is their mean: curvature and squared slope have one scale, and the secant's relative
error is of the order of h ||g||, the number of nats the probe moves S. A deep network adds its own
curvature on the same kind of scale. So the step keeps h ||g|| <= C, whatever the input's scale
says. Deep BatchNorm nets at random init have ||g|| in the tens to thousands (their
batch-normalised layers amplify input perturbations), where the rounding bound alone moves S by
several nats. C = 0.03 nats: on the suite's timm zoo extended with MobileOne, FBNet, MnasNet,
MobileNetV4, RepVGG and EfficientNetV2 (random init, train mode, 64 and 224 px, with and without
dropout / drop-path) the regulariser's secant ratio lies in [0.93, 1.01] for the default rfd and for
fd, where the rule without the curvature bound (4 eps^(1/3) RMS) gives 0.06-1.43 and 1.00-1.48
(``benchmarks/results/estimator_step_rule.md``, from ``benchmarks/estimator_step_rule.py``, with the
activation patterns replayed; before the replay the bounded rule gave 0.87-1.12 and 0.90-1.12).
C was chosen, before the replay, by the default's ratio over C = 1, 0.3, 0.1, 0.03 and 0.01 on the same models at 64 px
and on MobileOne-S0 and MobileNetV4-conv-small at 224 px (``benchmarks/results/estimator_step_rule_sweep.md``,
``python benchmarks/estimator_step_rule.py --sweep``): C >= 0.1 leaves MobileOne-S0 at 64 px
below the band (0.744-0.795), C = 0.03 keeps every row in [0.87, 1.12], and C = 0.01 meets
rounding on MobileNetV4-conv-small at 224 px (0.446 and 0.774), whose ||g|| is in the thousands.

central keeps the curvature bound too, but on RepVGG-A0 (mean ||g|| 0.22 to 2.31) C / ||g|| is larger
than central's rounding bound, so its step is that rounding bound, 57 times rfd's. Before the probes
replayed activation patterns its secant averaged over the ReLU kinks that step crosses (ratio
0.06-0.66 on three of RepVGG's four rows); with the patterns replayed it measures the clean piece's
slope, and its ratio is 0.92-1.00 on every row of the table. A smaller rounding bound would cost its
value accuracy on smooth nets (above), so central's rule stays as it is.

fp32 logits give a rounding bound of h = 3.5e-4 RMS (fd, rfd) / 2.0e-2 RMS (central), bf16 logits
0.088 RMS / 0.79 RMS, fp64 1.5e-8 RMS / 2.4e-5 RMS. Under
autocast the penalty's passes run in fp32 (:mod:`.core`), so their logits, and their step, are fp32's.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

from .defaults import AUTO, Step
from .registry import Estimator

#: C, the most nats that the probe may move S along v: h ||g|| <= C (see the module docstring).
CURVATURE_BOUND = 0.03


def unit_direction(g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(v, ||g||) per sample: v = g / ||g|| detached (0 where g = 0); ||g|| of shape (B,), detached."""
    g = g.detach()
    flat = g.flatten(1)
    scale = flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    u = flat / safe[:, None]
    unorm = torch.linalg.vector_norm(u, dim=1)
    unorm = torch.where(scale > 0, unorm, torch.ones_like(unorm))
    v = (u / unorm[:, None]).view_as(g)
    return v, scale * unorm


def rounding_bound(estimator: Estimator, logits_dtype: torch.dtype) -> float:
    """r / RMS(x) for ``estimator`` (see "The rounding bound" in the module docstring)."""
    eps = torch.finfo(logits_dtype).eps
    if estimator.exact_value or estimator.order == 1:
        return eps ** 0.5
    return 4.0 * eps ** (1.0 / (estimator.order + 1))


def resolve_step(step: Step, x: torch.Tensor, logits_dtype: torch.dtype, grad_norm: torch.Tensor,
                 estimator: Estimator) -> Union[float, torch.Tensor]:
    """h as a float, or for ``"auto"`` a detached (B,) tensor (see the module docstring).

    ``grad_norm``: ||g|| per sample, shape (B,) (0 where g = 0: that sample takes the rounding bound,
    and its v is 0 anyway); ``estimator``: the registry entry of the estimator that takes the step."""
    if step != AUTO:
        return step
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    rms = x.detach().to(acc).flatten(1).pow(2).mean(dim=1).sqrt()
    rms = torch.where(rms > 0, rms, torch.ones_like(rms))
    rounding = rounding_bound(estimator, logits_dtype) * rms
    norm = grad_norm.detach().to(acc)
    curvature = torch.where(norm > 0, CURVATURE_BOUND / norm, torch.full_like(norm, float("inf")))
    return torch.minimum(rounding, curvature)


def broadcast_step(h: Union[float, torch.Tensor], x: torch.Tensor) -> Union[float, torch.Tensor]:
    """h shaped to multiply a (B, ...) tensor like x."""
    if isinstance(h, torch.Tensor):
        return h.to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))
    return h
