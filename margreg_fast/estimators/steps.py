r"""The finite-difference direction v and step h.

Direction: v = g / ||g|| per sample, with the norm over all non-batch dimensions, detached. It is
computed as u = g / max|g|, v = u / ||u|| so that tiny gradients neither underflow nor blow up; a
sample with g = 0 gets v = 0 (and so x+ = x, D = 0, penalty 0, never NaN).

Step ``"auto"`` (the default): per sample, the smaller of a rounding bound and a curvature bound,

    h_i = min( c_p eps^(1/(p+1)) RMS(x_i),  C / ||g_i|| ),

with eps the machine epsilon of the logits' dtype, RMS(x_i) = sqrt(mean(x_i^2)) (1 where x_i = 0),
p the order of the truncation error that h trades against rounding (the registry's ``order``:
:mod:`.registry`), and ||g_i|| = ||grad_x S(x_i)||, known exactly (detached) from the backward that
gives v. h is detached.

**The rounding bound** (as before the curvature bound existed):

* ``fd`` (p = 1, c_1 = 1): its value has error ~ h (truncation) + eps / h (rounding): h = eps^(1/2) RMS.
* ``central`` and ``rfd`` (p = 2, c_2 = 1): the *parameter gradient* is what trains the model. rfd's
  expected gradient is the central secant's, with bias ~ h^2, and its rounding error is that of two
  backward passes subtracted and divided by h: eps_grad / h with eps_grad above the logits' eps.
  Minimising eps_grad / h + h^2 gives h ~ eps_grad^(1/3). On smooth CNNs the cosine of rfd's and
  central's parameter gradients with exact's stays at 0.9997-1.0000 in fp32 from h = 2.3e-4 to
  0.06 (``benchmarks/results/estimator_step_sweep.md``), so rounding leaves a wide range. c_2 = 1
  (h = 4.9e-3 RMS in fp32) sits low in it because ReLU nets want small steps: a probe that crosses
  many ReLU kinks measures an average of the pieces' slopes, not the slope at x. On RepVGG-A0 at
  224 px (plain ReLU, 3x3 convolutions, no pooling) the secant ratio is 0.79 at 0.02 RMS, 0.92-1.01
  at 5e-3 RMS and 0.97-1.05 at 2e-3 RMS (``benchmarks/results/estimator_step_rule.md``).

**The curvature bound.** Along v, S(x + e v) = S(x) + e ||g|| + (e^2/2) v^T H v + ..., so a secant's
slope is ||g|| (1 + (h/2) v^T H v / ||g|| + ...). For the head alone, S = logsumexp(z) with z linear
in x, the curvature along v is the variance under softmax(z) of the logits' rates d z_k / de, while
the slope ||g|| is their mean: curvature and squared slope have one scale, and the relative error of
the secant is of the order of h ||g||, the number of nats the probe moves S. A deep network adds its
own curvature on the same kind of scale. So the step must keep h ||g|| small, whatever the input's
scale says: h ||g|| <= C. Deep BatchNorm nets at init have ||g|| in the hundreds to thousands (at
random init their batch-normalised layers amplify input perturbations), where the rounding bound
alone moves S by 10 nats or more and the secant ratio falls to 0.05-0.5. C = 0.03 nats: on the
suite's timm zoo extended with MobileOne, FBNet, MnasNet, MobileNetV4, RepVGG and EfficientNetV2
(random init, train mode, 64 and 224 px, with and without dropout / drop-path), both one-sided
secant ratios lie in [0.85, 1.02] at C = 0.03, while C = 0.1 leaves MobileOne-S0 at 0.62-0.75 and
C = 0.01 meets rounding on MobileNetV4-conv-small at 224 px (h ||x|| / ||x||_inf near fp32's
resolution of x; ratio 0.74-0.76). The measured table:
``benchmarks/results/estimator_step_rule.md`` (``benchmarks/estimator_step_rule.py``).

fp32 logits give a rounding bound of h = 3.5e-4 RMS (fd) / 4.9e-3 RMS (central, rfd), bf16 logits
0.088 RMS / 0.20 RMS, fp64 1.5e-8 RMS / 6.1e-6 RMS. Under autocast the penalty's passes run in
fp32 (:mod:`.core`), so their logits, and their step, are fp32's.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

from .defaults import AUTO, Step

#: c_p of the rounding bound per truncation order p (see the module docstring).
ROUNDING_FACTOR = {1: 1.0, 2: 1.0}
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


def resolve_step(step: Step, x: torch.Tensor, logits_dtype: torch.dtype, order: int,
                 grad_norm: torch.Tensor) -> Union[float, torch.Tensor]:
    """h as a float, or for ``"auto"`` a detached (B,) tensor (see the module docstring).

    ``order``: the estimator's truncation order (1 = fd, 2 = central / rfd); ``grad_norm``: ||g|| per
    sample, shape (B,) (0 where g = 0: that sample takes the rounding bound, and its v is 0 anyway)."""
    if step != AUTO:
        return step
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    rms = x.detach().to(acc).flatten(1).pow(2).mean(dim=1).sqrt()
    rms = torch.where(rms > 0, rms, torch.ones_like(rms))
    rounding = ROUNDING_FACTOR[order] * torch.finfo(logits_dtype).eps ** (1.0 / (order + 1)) * rms
    norm = grad_norm.detach().to(acc)
    curvature = torch.where(norm > 0, CURVATURE_BOUND / norm, torch.full_like(norm, float("inf")))
    return torch.minimum(rounding, curvature)


def broadcast_step(h: Union[float, torch.Tensor], x: torch.Tensor) -> Union[float, torch.Tensor]:
    """h shaped to multiply a (B, ...) tensor like x."""
    if isinstance(h, torch.Tensor):
        return h.to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))
    return h
