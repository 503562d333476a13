"""Dataset container and the error raised for unreadable data files."""
from __future__ import annotations

from dataclasses import dataclass

import torch


class DataFileError(ValueError):
    """A data file is missing, truncated or corrupt; the message names the file."""


@dataclass
class ImageDataset:
    """Images with labels and optional group ids and null-feature masks.

    x: (N, 1, H, W) float32 in [0, 1]; y: (N,) int64 labels; group: (N,) int64 group ids or None;
    null_mask: (N, 1, H, W) bool, True on pixels that carry no label information (the null block of
    BlockMNIST, the shortcut band of the spurious variant), or None.
    """

    x: torch.Tensor
    y: torch.Tensor
    group: torch.Tensor | None = None
    null_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_images(self.x, self.y)
        n = self.x.shape[0]
        if self.group is not None and (self.group.shape != (n,) or self.group.dtype != torch.int64):
            raise ValueError(f"group must be an int64 tensor of shape ({n},), got {self.group.dtype} "
                             f"{tuple(self.group.shape)}")
        if self.null_mask is not None and (self.null_mask.shape != self.x.shape or self.null_mask.dtype != torch.bool):
            raise ValueError(f"null_mask must be a bool tensor of shape {tuple(self.x.shape)}, got "
                             f"{self.null_mask.dtype} {tuple(self.null_mask.shape)}")

    def __len__(self) -> int:
        return self.x.shape[0]


def check_images(images: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise TypeError/ValueError unless images is (N, 1, H, W) float in [0, 1] and labels (N,) int64 >= 0."""
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(f"images and labels must be tensors, got {type(images).__name__}, {type(labels).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point, got {images.dtype}")
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, 1, H, W), got {tuple(images.shape)}")
    if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be an int64 tensor of shape ({images.shape[0]},), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if images.numel() and not (images.min() >= 0 and images.max() <= 1):
        raise ValueError("images must lie in [0, 1]")
    if labels.numel() and labels.min() < 0:
        raise ValueError("labels must be >= 0")
