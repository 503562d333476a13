r"""The penalised subset of a batch (the regulariser's ``fraction``) and the scale that keeps the expected gradient.

With fraction f in (0, 1] the penalty is computed on m = max(1, round(f B)) of the B samples, a set
S drawn uniformly without replacement, and the penalty term of the loss is

    P_S = (B / m) * sum_{i in S} w_i R_i  /  sum_{i=1..B} w_i,

with w_i = 1 for the marginal penalty (defined on every sample) and w_i = [sample i is labelled]
for the conditional and joint ones. Each sample lies in S with probability m / B, so

    E_S[P_S] = sum_i w_i R_i / sum_i w_i,

the penalty mean of f = 1; the parameters do not depend on S, so the expected parameter gradient
of the loss equals that of f = 1 at the same weight. Its variance grows as m shrinks (a batch of 8 at
f = 0.125 penalises one sample a step).
"""
from __future__ import annotations

from typing import Optional

import torch

from ._estimators.quantities import labelled


def subset_size(batch: int, fraction: float) -> int:
    """m = max(1, round(fraction * batch))."""
    return max(1, round(fraction * batch))


def draw_subset(batch: int, fraction: float, device: torch.device,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Indices (m,) of the penalised samples, uniform without replacement, drawn from ``generator``."""
    draw_device = generator.device if generator is not None else device
    return torch.randperm(batch, generator=generator, device=draw_device)[:subset_size(batch, fraction)].to(device)


def complement(subset: torch.Tensor, batch: int) -> torch.Tensor:
    """The indices (B - m,) of a batch of ``batch`` samples that are not in ``subset`` (m distinct indices),
    in increasing order; by a stable sort, whose output size is known, not ``nonzero`` (a host sync on CUDA)."""
    outside = torch.ones(batch, dtype=torch.uint8, device=subset.device)
    outside[subset] = 0
    return torch.argsort(outside, descending=True, stable=True)[:batch - subset.shape[0]]


def subset_mean(per_sample: torch.Tensor, batch: int, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """P_S from R_i on the subset (m,); ``labels``: the whole batch's, for a penalty that needs a label.

    Such a penalty is 0 on unlabelled samples already, so sum_{i in S} w_i R_i = sum_{i in S} R_i.
    """
    m = per_sample.shape[0]
    if labels is None:
        return per_sample.sum() / m
    return per_sample.sum() * (batch / m) / labelled(labels).sum().to(per_sample.dtype)
