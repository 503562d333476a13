r"""The per-sample scalar S(z, y) whose input gradient is penalised, and stable differences of it.

    marginal:     S = E(z) = logsumexp_k z_k                 R = ||grad_x E||^2       (MDR)
    conditional:  S = CE(z, y) = E(z) - z_y                  R = ||grad_x CE||^2      (IGR)
    joint:        S = z_y                                    R = ||grad_x z_y||^2

Differences S(zb) - S(za) go through the fused head op for the logsumexp part, which computes
D = E(zb) - E(za) without cancellation; z_y differences are plain subtractions of the two logits.

Unlabelled samples: a label equal to ``IGNORE_INDEX`` (-100, as in ``F.cross_entropy``) marks a
sample without a label. The label-free marginal penalty is defined for it; the conditional and
joint quantities are not, and give S = 0 and penalty 0 there (by every estimator), just as
``F.cross_entropy(..., reduction="none")`` gives CE 0. Means then run over the labelled samples
(:mod:`margreg_fast._reduction`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .._ops import energy_difference
from .._ops.validation import IGNORE_INDEX

#: The penalty kinds (``penalty_kind=``), named by the quantity S whose input gradient they square: S = logsumexp f
#: (marginal), CE(f, y) (conditional), f_y (joint). One list for the whole library.
PENALTY_KINDS = ("marginal", "conditional", "joint")


def labelled(target: torch.Tensor) -> torch.Tensor:
    """(B,) bool: which samples carry a label (target != IGNORE_INDEX)."""
    return target != IGNORE_INDEX


def value(penalty: str, z: torch.Tensor, target: Optional[torch.Tensor]) -> torch.Tensor:
    """S(z, y) per sample, shape (B,)."""
    if penalty == "marginal":
        return torch.logsumexp(z, dim=1)
    if penalty == "conditional":
        return F.cross_entropy(z, target, reduction="none", ignore_index=IGNORE_INDEX)  # 0 where unlabelled
    return _picked(z, target)


def _picked(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """z_y per sample, 0 (constant) where the sample is unlabelled."""
    keep = labelled(target)
    picked = z.gather(1, torch.where(keep, target, torch.zeros_like(target))[:, None])[:, 0]
    return torch.where(keep, picked, torch.zeros_like(picked))


def difference(penalty: str, za: torch.Tensor, zb: torch.Tensor, target: Optional[torch.Tensor],
               backend: str, with_ce: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(S(zb) - S(za), CE(za, y) or None) per sample, differentiable in both logit rows.

    The logsumexp part comes from the fused head op (``energy_difference``; one pass also gives the CE
    of za); the joint and conditional quantities add the z_y difference to it, and are 0 on
    unlabelled samples.
    """
    if penalty == "joint":
        ce = F.cross_entropy(za, target, reduction="none", ignore_index=IGNORE_INDEX) if with_ce else None
        return _picked(zb, target) - _picked(za, target), ce
    out = energy_difference(za, zb, target if with_ce else None, ignore_index=IGNORE_INDEX, backend=backend)
    if penalty == "marginal":
        return out.difference, out.ce
    d = out.difference - (_picked(zb, target) - _picked(za, target)).to(out.difference.dtype)
    return torch.where(labelled(target), d, torch.zeros_like(d)), out.ce
