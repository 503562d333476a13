r"""The per-sample scalar S(z, y) whose input gradient is penalised, and stable differences of it.

    marginal:     S = E(z) = logsumexp_k z_k                 R = ||grad_x E||^2       (MDR)
    conditional:  S = CE(z, y) = E(z) - z_y                  R = ||grad_x CE||^2      (IGR)
    joint:        S = z_y                                    R = ||grad_x z_y||^2

Differences S(zb) - S(za) go through the fused head op for the logsumexp part, which computes
D = E(zb) - E(za) without cancellation; z_y differences are plain subtractions of the two logits.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..ops import energy_penalty

QUANTITIES = ("marginal", "conditional", "joint")


def value(quantity: str, z: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
    """S(z, y) per sample, shape (B,)."""
    if quantity == "marginal":
        return torch.logsumexp(z, dim=1)
    if quantity == "conditional":
        return F.cross_entropy(z, target, reduction="none")
    return z.gather(1, target[:, None])[:, 0]


def _picked_difference(za: torch.Tensor, zb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (zb.gather(1, target[:, None]) - za.gather(1, target[:, None]))[:, 0]


def difference(quantity: str, za: torch.Tensor, zb: torch.Tensor, target: Optional[torch.Tensor],
               backend: str, with_ce: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(S(zb) - S(za), CE(za, y) or None) per sample, differentiable in both logit rows.

    The logsumexp part comes from the fused head op (``energy_penalty``; one pass also gives the CE
    of za); the joint and conditional quantities add the z_y difference to it.
    """
    if quantity == "joint":
        ce = F.cross_entropy(za, target, reduction="none") if with_ce else None
        return _picked_difference(za, zb, target), ce
    out = energy_penalty(za, zb, 1.0, target=target if with_ce else None, backend=backend)
    if quantity == "marginal":
        return out.difference, out.ce
    return out.difference - _picked_difference(za, zb, target).to(out.difference.dtype), out.ce
