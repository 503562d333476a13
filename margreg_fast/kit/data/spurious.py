"""Spurious-shortcut variant: a patch whose position encodes a class, appended below each image.

Each (1, H, W) image gets a band of ``rows * p`` extra rows at the bottom (zeros), p = max(1, min(H, W) // 8)
the patch size. The band is divided into p x p cells, W // p per row, enough rows for num_classes cells;
the patch of class c lights cell c (intensity 1). The digit is never covered.

On training data the patch class equals the label with probability ``agreement`` and is otherwise drawn
uniformly from the *other* classes, so the patch agrees with the label on a fraction ``agreement`` of
images in expectation. On test data the patch class is uniform and independent of the label
(agreement 1 / num_classes). group = label * num_classes + patch_class; null_mask marks the whole band
(the only pixels the shortcut lives in, lit or not).
"""
from __future__ import annotations

import math

import torch

from .types import ImageDataset, check_images


def patch_layout(height: int, width: int, num_classes: int) -> tuple[int, int, int]:
    """(p, cells_per_row, band_rows): patch size, cells per band row and the band height in pixels."""
    p = max(1, min(height, width) // 8)
    per_row = width // p
    if per_row < 1:
        raise ValueError(f"image width {width} too small for a {p}x{p} patch")
    return p, per_row, math.ceil(num_classes / per_row) * p


def make_spurious(images: torch.Tensor, labels: torch.Tensor, *, seed: int, train: bool, agreement: float = 0.95,
                  num_classes: int = 10) -> ImageDataset:
    """Append the class-coding patch band: x (N, 1, H + band_rows, W), see the module docstring."""
    check_images(images, labels)
    if not 0.0 <= agreement <= 1.0:
        raise ValueError(f"agreement must be in [0, 1], got {agreement}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if labels.numel() and labels.max() >= num_classes:
        raise ValueError(f"labels must be < num_classes={num_classes}, got max {int(labels.max())}")
    n, _, h, w = images.shape
    p, per_row, band_rows = patch_layout(h, w, num_classes)
    gen = torch.Generator().manual_seed(seed)
    if train:
        agree = torch.rand(n, generator=gen) < agreement
        # uniform over the other num_classes - 1 classes: add an offset in 1..C-1 modulo C
        offset = torch.randint(1, num_classes, (n,), generator=gen)
        patch_class = torch.where(agree, labels, (labels + offset) % num_classes)
    else:
        patch_class = torch.randint(0, num_classes, (n,), generator=gen)
    band = torch.zeros(n, 1, band_rows // p, per_row, dtype=images.dtype)
    band[torch.arange(n), 0, patch_class // per_row, patch_class % per_row] = 1
    band = band.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
    band = torch.nn.functional.pad(band, (0, w - per_row * p))
    x = torch.cat([images, band], dim=2).contiguous()
    null_mask = torch.zeros(n, 1, h + band_rows, w, dtype=torch.bool)
    null_mask[:, :, h:, :] = True
    group = labels * num_classes + patch_class
    return ImageDataset(x=x, y=labels.clone(), group=group, null_mask=null_mask)
