r"""The finite-difference direction v and step h.

Direction: v = g / ||g|| per sample, with the norm over all non-batch dimensions, detached. It is
computed as u = g / max|g|, v = u / ||u|| so that tiny gradients neither underflow nor blow up; a
sample with g = 0 gets v = 0 (and so x+ = x, D = 0, penalty 0, never NaN).

Step ``"auto"`` (the default): per sample, h_i = c_p eps^(1/(p+1)) RMS(x_i), where eps is the machine
epsilon of the logits' dtype, RMS(x_i) = sqrt(mean(x_i^2)) (1 where x_i = 0) sets the input's scale,
and p is the order of the truncation error that h trades against rounding:

* ``fd`` (p = 1, c = 1): its value has error ~ h (truncation) + eps / h (rounding): h = eps^(1/2) RMS.
* ``central`` and ``rfd`` (p = 2, c = 4): the *parameter gradient* is what trains the model. rfd's
  expected gradient is the central secant's, with bias ~ h^2, and its rounding error is that of two
  backward passes through the whole network subtracted and divided by h: eps_grad / h, with eps_grad
  well above the logits' eps (every layer's accumulations add to it). Minimising
  eps_grad / h + h^2 gives h ~ eps_grad^(1/3); c = 4 (i.e. eps_grad ~ 64 eps) sits in the middle,
  in log scale, of the range of h over which rfd's and central's parameter gradients keep their
  cosine with exact's on smooth CNNs, fp32 and float64, at init and trained
  (``benchmarks/results/estimator_step_sweep.md``, from ``benchmarks/estimator_agreement.py --sweep``).
  Under bf16 autocast the same rule gives h ~ 0.8 RMS, at which the default estimator's parameter
  gradient on an SDPA ViT stays aligned with the fp32 one while h = 0.01 does not
  (``tests/estimators/test_steps.py``).

fp32 logits give h = 3.5e-4 RMS (fd) / 2.0e-2 RMS (central, rfd), bf16 logits 0.088 RMS / 0.79 RMS,
fp64 1.5e-8 RMS / 2.4e-5 RMS. h is detached.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch

from .defaults import AUTO, Step

#: c_p of the ``"auto"`` rule per truncation order p (see the module docstring).
AUTO_FACTOR = {1: 1.0, 2: 4.0}


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


def resolve_step(step: Step, x: torch.Tensor, logits_dtype: torch.dtype, order: int) -> Union[float, torch.Tensor]:
    """h as a float, or for ``"auto"`` a detached (B,) tensor (see the module docstring); order 1 = fd, 2 = central."""
    if step != AUTO:
        return step
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    rms = x.detach().to(acc).flatten(1).pow(2).mean(dim=1).sqrt()
    rms = torch.where(rms > 0, rms, torch.ones_like(rms))
    return AUTO_FACTOR[order] * torch.finfo(logits_dtype).eps ** (1.0 / (order + 1)) * rms


def broadcast_step(h: Union[float, torch.Tensor], x: torch.Tensor) -> Union[float, torch.Tensor]:
    """h shaped to multiply a (B, ...) tensor like x."""
    if isinstance(h, torch.Tensor):
        return h.to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))
    return h
