"""Non-robust shortcut: a faint class-coded texture spread over the whole image (after Ilyas et al. 2019).

Class c owns a fixed periodic sign texture, a square wave of period 4 (or 2) along one direction:

    s_c(r, q) = +1 if (u_c r + v_c q) mod 4 is 0 or 3, else -1,      i.e. sign(cos(pi/2 (u_c r + v_c q) + pi/4)),

with (u_c, v_c) the c-th of the 15 nonzero pairs in {0..3}^2 in lexicographic order ((0, 1), (0, 2), (0, 3),
(1, 0), ...). On an H x W grid with H and W multiples of 4 every pattern sums to 0 (zero mean) and any
two are orthogonal. An image x in [0, 1] with shortcut class k becomes

    x' = a + (1 - 2 a) x + a s_k,

the image squeezed into [a, 1 - a] so that the texture is added without clipping: x' - (a + (1 - 2a) x)
is exactly +-a on every pixel and x' stays in [0, 1]. With a <= 0.05 the texture is invisible to the eye
and small against an L-inf budget of 0.1, unlike the spurious variant's 2x2 square at intensity 1: a
*non-robust* feature, where the square is a robust one.

The shortcut class k follows the spurious variant's rule (``spurious.shortcut_classes``): on training
data the label with probability ``agreement``, else uniform over the other classes; on test data uniform
and independent of the label. group = label * num_classes + k (as make_spurious, so the same
``worst_group_acc`` and ``acc_patch_disagrees`` apply); null_mask is True everywhere (the shortcut lives
in every pixel).
"""
from __future__ import annotations

import torch

from .spurious import check_shortcut_args, shortcut_classes
from .types import ImageDataset, check_images

#: The frequency pairs (u, v) of the class textures, class c taking the c-th.
FREQUENCIES = tuple((u, v) for u in range(4) for v in range(4) if (u, v) != (0, 0))


def texture_patterns(height: int, width: int, num_classes: int) -> torch.Tensor:
    """(num_classes, height, width) float32 sign textures s_c (module docstring), values in {-1, +1}."""
    if height % 4 or width % 4:
        raise ValueError(f"the textures need image sides that are multiples of 4 (zero mean), got {height}x{width}")
    if not 2 <= num_classes <= len(FREQUENCIES):
        raise ValueError(f"num_classes must be in [2, {len(FREQUENCIES)}], got {num_classes}")
    rows, cols = torch.arange(height)[:, None], torch.arange(width)[None, :]
    out = []
    for u, v in FREQUENCIES[:num_classes]:
        phase = (u * rows + v * cols) % 4
        out.append(1.0 - 2.0 * ((phase == 1) | (phase == 2)).float())
    return torch.stack(out)


def make_texture(images: torch.Tensor, labels: torch.Tensor, *, seed: int, train: bool, agreement: float = 0.95,
                 amplitude: float = 0.05, num_classes: int = 10) -> ImageDataset:
    """Add the class-coded texture of amplitude ``amplitude``: x (N, 1, H, W), same shape; see the module docstring."""
    check_images(images, labels)
    check_shortcut_args(labels, agreement, num_classes)
    if not 0.0 < amplitude < 0.5:
        raise ValueError(f"amplitude must be in (0, 0.5), got {amplitude}")
    n, _, h, w = images.shape
    k = shortcut_classes(labels, seed=seed, train=train, agreement=agreement, num_classes=num_classes)
    pattern = texture_patterns(h, w, num_classes).to(images.dtype)[k].unsqueeze(1)
    x = (amplitude + (1 - 2 * amplitude) * images + amplitude * pattern).clamp_(0.0, 1.0)
    return ImageDataset(x=x, y=labels.clone(), group=labels * num_classes + k,
                        null_mask=torch.ones(n, 1, h, w, dtype=torch.bool))
