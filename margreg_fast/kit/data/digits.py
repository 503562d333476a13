"""The embedded default data: scikit-learn's bundled 8x8 handwritten digits (no download)."""
from __future__ import annotations

import torch

from .types import check_images


def load_digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 images of ``sklearn.datasets.load_digits`` as ((N, 1, 8, 8) float32 in [0, 1], (N,) int64).

    Pixel values are integers 0..16 in the source and are divided by 16.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images, labels


def split_train_test(images: torch.Tensor, labels: torch.Tensor, *, test_fraction: float, seed: int):
    """Random split into ((train_images, train_labels), (test_images, test_labels)).

    A seeded permutation; the test part has round(test_fraction * N) images (at least one of each part).
    The training part keeps the original relative order of its images (training shuffles them); the test
    part comes in the permutation's order, so that any prefix of it (the first ``eval_samples`` images
    that attacks, attributions and density metrics read) is a random sample: the shipped digit sets are
    sorted by label, and a test part in their order would show those metrics only the first classes.
    """
    check_images(images, labels)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 images to split, got {n}")
    n_test = min(max(round(test_fraction * n), 1), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test_idx, train_idx = perm[:n_test], perm[n_test:].sort().values
    return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])
