"""The kit's checks of class labels: integer class indices, never truncated, one per sample.

The library checks its own arguments; the kit checks those of its attacks and attributions here, so
that it stands on the library's public API only.
"""
from __future__ import annotations

import torch


def check_class_indices(labels, name: str) -> None:
    """``labels`` must be a tensor of integer class indices (a float, complex or bool tensor raises:
    it would be truncated silently)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of integer class indices, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}")


def check_batch_labels(labels, images: torch.Tensor, name: str = "labels") -> torch.Tensor:
    """One integer class index per image, shape (N,) with N = images.shape[0]; returned as int64."""
    check_class_indices(labels, name)
    if labels.shape != images.shape[:1]:
        raise ValueError(f"{name} must hold one label per sample, shape ({images.shape[0]},), got shape "
                         f"{tuple(labels.shape)}: the first dimension of the images (shape {tuple(images.shape)}) "
                         "is the batch")
    return labels.long()
