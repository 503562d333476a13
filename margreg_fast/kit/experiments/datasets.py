"""Build the train / test ImageDatasets of an experiment from the config and a seed.

The seed fixes the train/test split of the embedded digits, the random block order of BlockMNIST,
the shortcut patches of the spurious variant and the optional subsampling, so all methods trained
with the same seed see exactly the same data.
"""
from __future__ import annotations

import torch

from ..data import ImageDataset, load_digits_images, load_mnist_dir, make_blockmnist, make_spurious, split_train_test
from .config import ExperimentConfig


def _subsample(ds: ImageDataset, limit: int | None, seed: int) -> ImageDataset:
    if limit is None or limit >= len(ds.y):
        return ds
    idx = torch.randperm(len(ds.y), generator=torch.Generator().manual_seed(seed))[:limit]
    idx = idx.sort().values
    pick = lambda t: None if t is None else t[idx]  # noqa: E731
    return ImageDataset(x=ds.x[idx], y=ds.y[idx], group=pick(ds.group), null_mask=pick(ds.null_mask))


def _base_images(cfg: ExperimentConfig, seed: int):
    """((train_images, train_labels), (test_images, test_labels)) before the experiment's transform."""
    if cfg.data_dir is None:
        images, labels = load_digits_images()
        return split_train_test(images, labels, test_fraction=cfg.test_fraction, seed=seed)
    return load_mnist_dir(cfg.data_dir, train=True), load_mnist_dir(cfg.data_dir, train=False)


def build_datasets(cfg: ExperimentConfig, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """The (train, test) datasets of ``cfg.experiment`` for ``seed``."""
    (xtr, ytr), (xte, yte) = _base_images(cfg, seed)
    if cfg.experiment == "blockmnist":
        train = make_blockmnist(xtr, ytr, seed=2 * seed)
        test = make_blockmnist(xte, yte, seed=2 * seed + 1)
    else:
        train = make_spurious(xtr, ytr, seed=2 * seed, train=True)
        test = make_spurious(xte, yte, seed=2 * seed + 1, train=False)
    return _subsample(train, cfg.max_train, seed), _subsample(test, cfg.max_test, seed + 10_000)
