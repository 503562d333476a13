"""Build the train / evaluation ImageDatasets of an experiment from the config and a seed.

``split="test"``: train on the training split, evaluate on the test split. ``split="validation"``:
a seeded ``val_fraction`` of the training split is carved out and used for evaluation, the model
trains on the rest and the test split is never touched (for choosing penalty weights).

The seed fixes the train/test (and train/validation) split of mnist5k and the 8x8 digits, the random block order of BlockMNIST,
the shortcut patches (or textures) of the spurious variant and the optional subsampling, so all schemes trained
with the same seed see exactly the same data.
"""
from __future__ import annotations

import torch

from ..data import (ImageDataset, load_animal, load_digits_images, load_mnist5k, load_mnist_dir, make_blockmnist,
                    make_spurious, make_texture, split_train_test)
from .config import ExperimentConfig


def _subsample(ds: ImageDataset, limit: int | None, seed: int) -> ImageDataset:
    if limit is None or limit >= len(ds.y):
        return ds
    # a random subset in random order: any prefix of an evaluation set stays a random sample
    idx = torch.randperm(len(ds.y), generator=torch.Generator().manual_seed(seed))[:limit]
    pick = lambda t: None if t is None else t[idx]  # noqa: E731
    return ImageDataset(x=ds.x[idx], y=ds.y[idx], group=pick(ds.group), null_mask=pick(ds.null_mask))


_LOADERS = {"mnist5k": load_mnist5k, "digits": load_digits_images, "animal": load_animal}


def _base_images(cfg: ExperimentConfig, seed: int):
    """((train_images, train_labels), (eval_images, eval_labels)) before the experiment's transform."""
    if cfg.dataset == "idx":
        train, test = load_mnist_dir(cfg.data_dir, train=True), load_mnist_dir(cfg.data_dir, train=False)
    else:
        train, test = split_train_test(*_LOADERS[cfg.dataset](), test_fraction=cfg.test_fraction, seed=seed)
    if cfg.split == "validation":
        return split_train_test(*train, test_fraction=cfg.val_fraction, seed=seed + 20_000)
    return train, test


def build_datasets(cfg: ExperimentConfig, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """The (train, evaluation) datasets of ``cfg.experiment`` for ``seed``."""
    (xtr, ytr), (xte, yte) = _base_images(cfg, seed)
    if cfg.experiment == "blockmnist":
        train = make_blockmnist(xtr, ytr, seed=2 * seed, patch_size=cfg.patch_size)
        test = make_blockmnist(xte, yte, seed=2 * seed + 1, patch_size=cfg.patch_size)
    elif cfg.spurious_patch == "texture":
        train = make_texture(xtr, ytr, seed=2 * seed, train=True, agreement=cfg.spurious_agreement,
                             amplitude=cfg.spurious_amplitude)
        test = make_texture(xte, yte, seed=2 * seed + 1, train=False, amplitude=cfg.spurious_amplitude)
    else:
        layout = {"overlay": True, "patch": 2} if cfg.spurious_patch == "overlay" else {}
        train = make_spurious(xtr, ytr, seed=2 * seed, train=True, agreement=cfg.spurious_agreement, **layout)
        test = make_spurious(xte, yte, seed=2 * seed + 1, train=False, **layout)
    return _subsample(train, cfg.max_train, seed), _subsample(test, cfg.max_test, seed + 10_000)
