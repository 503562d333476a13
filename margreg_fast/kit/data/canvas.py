"""Digits at random positions on a larger zero canvas: mostly-background images, where max-pool
windows hold exact ties and ReLU pre-activations sit on their kinks (the hard case for finite
differences of a network's input gradient)."""
from __future__ import annotations

import torch

from .types import check_images


def place_on_canvas(images: torch.Tensor, size: int, *, seed: int) -> torch.Tensor:
    """(N, C, size, size) zeros with each image pasted at a uniformly random position (seeded)."""
    check_images(images, torch.zeros(images.shape[0], dtype=torch.int64))
    n, c, h, w = images.shape
    if size < max(h, w):
        raise ValueError(f"canvas size {size} is smaller than the images ({h}x{w})")
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, size - h + 1, (n,), generator=gen)
    cols = torch.randint(0, size - w + 1, (n,), generator=gen)
    out = images.new_zeros(n, c, size, size)
    for i in range(n):
        out[i, :, rows[i]:rows[i] + h, cols[i]:cols[i] + w] = images[i]
    return out
