"""BlockMNIST (Shah, Jain and Netrapalli 2021): a digit block and a null block stacked in random order.

Each output image is (1, 2H, W): the H x W digit and an H x W block holding a fixed null patch (a
square outline with its two diagonals, intensity 1), one above the other. Which block is on top is a
fair coin per image. Only the digit carries the label, so any attribution on the null block is leakage.

The paper's geometry (its Figure 1): 28x28 MNIST blocks, an 11x11 patch at rows and columns 9-19 of
the null block, 4 * 11 - 4 = 40 outline pixels plus 2 * 9 - 1 = 17 more on the diagonals = 57 lit.
"""
from __future__ import annotations

import torch

from .types import ImageDataset, check_images


def null_patch(height: int, width: int, size: int | None = None) -> torch.Tensor:
    """The fixed (height, width) float32 null patch: a square outline with a diagonal cross, values {0, 1}.

    ``size=None`` (the small-image rule): the outline is inset by m = max(1, min(height, width) // 8)
    pixels on every side. ``size=s``: an s x s square whose first row is ceil((height - s) / 2) and first
    column ceil((width - s) / 2), so 28x28 with s = 11 spans rows and columns 9..19 (the paper's).
    Both diagonals join the corners (rounded to the nearest pixel when the outline is not square).
    """
    if height < 4 or width < 4:
        raise ValueError(f"null patch needs a block of at least 4x4, got {height}x{width}")
    if size is None:
        m = max(1, min(height, width) // 8)
        top, bottom, left, right = m, height - 1 - m, m, width - 1 - m
    else:
        if isinstance(size, bool) or not isinstance(size, int) or not 3 <= size <= min(height, width):
            raise ValueError(f"patch size must be an int in [3, {min(height, width)}] for a {height}x{width} "
                             f"block, got {size!r}")
        top, left = (height - size + 1) // 2, (width - size + 1) // 2
        bottom, right = top + size - 1, left + size - 1
    patch = torch.zeros(height, width, dtype=torch.float32)
    patch[top, left:right + 1] = 1
    patch[bottom, left:right + 1] = 1
    patch[top:bottom + 1, left] = 1
    patch[top:bottom + 1, right] = 1
    rows = torch.arange(top, bottom + 1)
    cols = torch.round(left + (rows - top).double() * (right - left) / (bottom - top)).long()
    patch[rows, cols] = 1
    patch[rows, right + left - cols] = 1
    return patch


def make_blockmnist(images: torch.Tensor, labels: torch.Tensor, *, seed: int,
                    patch_size: int | None = None) -> ImageDataset:
    """BlockMNIST from (N, 1, H, W) images: x (N, 1, 2H, W), y = labels, group = 0 if the digit is on top
    else 1, null_mask True on the null block. The block order comes from a generator seeded with ``seed``;
    the null block is ``null_patch(H, W, patch_size)``."""
    check_images(images, labels)
    n, _, h, w = images.shape
    gen = torch.Generator().manual_seed(seed)
    digit_on_top = torch.rand(n, generator=gen) < 0.5
    null = null_patch(h, w, patch_size).to(images.dtype).expand(n, 1, h, w)
    top = torch.where(digit_on_top[:, None, None, None], images, null)
    bottom = torch.where(digit_on_top[:, None, None, None], null, images)
    x = torch.cat([top, bottom], dim=2).contiguous()
    null_top = (~digit_on_top)[:, None, None, None].expand(n, 1, h, w)
    null_mask = torch.cat([null_top, ~null_top], dim=2).contiguous()
    group = (~digit_on_top).to(torch.int64)
    return ImageDataset(x=x, y=labels.clone(), group=group, null_mask=null_mask)
