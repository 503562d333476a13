r"""Reduction of per-sample penalties and CE over a batch, with ``F.cross_entropy``'s ignore_index rule.

A quantity that needs the label (CE, the conditional and joint penalties) is 0 on unlabelled samples
(label ``IGNORE_INDEX`` = -100) and its mean runs over the labelled samples only, exactly as
``F.cross_entropy(z, y)`` averages; a batch with no labelled sample gives NaN, as there. The marginal
penalty needs no label: it is defined, and averaged, over every sample.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._estimators.quantities import labelled

REDUCTIONS = ("mean", "sum", "none")


def reduce(per_sample: torch.Tensor, reduction: str, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``per_sample`` (B,) reduced; with ``labels``, "mean" divides by the number of labelled samples."""
    if reduction == "mean":
        if labels is None:
            return per_sample.mean()
        return per_sample.sum() / labelled(labels).sum().to(per_sample.dtype)
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
