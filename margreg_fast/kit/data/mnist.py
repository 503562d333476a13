"""MNIST / Fashion-MNIST from a directory of the standard IDX files."""
from __future__ import annotations

import os

import numpy as np
import torch

from .idx import read_idx
from .types import DataFileError

_PREFIX = {True: "train", False: "t10k"}


def _find(data_dir: str, stem: str) -> str:
    """The first existing spelling of ``stem`` (e.g. train-images-idx3-ubyte) in data_dir, plain or .gz."""
    dotted = stem.replace("-idx", ".idx")  # some mirrors write train-images.idx3-ubyte
    candidates = [os.path.join(data_dir, s + ext) for s in (stem, dotted) for ext in ("", ".gz")]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise DataFileError(f"{candidates[0]}: file not found (also tried {', '.join(candidates[1:])})")


def load_mnist_dir(data_dir, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) float32 in [0, 1] (uint8 / 255) and labels (N,) int64 of the train or test split.

    Reads ``{train,t10k}-images-idx3-ubyte[.gz]`` and ``{train,t10k}-labels-idx1-ubyte[.gz]``; works for
    MNIST and Fashion-MNIST (same file names). Raises DataFileError naming the offending file.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise DataFileError(f"{data_dir}: data directory not found")
    img_path = _find(data_dir, f"{_PREFIX[bool(train)]}-images-idx3-ubyte")
    lab_path = _find(data_dir, f"{_PREFIX[bool(train)]}-labels-idx1-ubyte")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataFileError(f"{img_path}: expected 3-d uint8 images, got {images.ndim}-d {images.dtype}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataFileError(f"{lab_path}: expected 1-d uint8 labels, got {labels.ndim}-d {labels.dtype}")
    if labels.shape[0] != images.shape[0]:
        raise DataFileError(f"{lab_path}: {labels.shape[0]} labels for {images.shape[0]} images in {img_path}")
    x = torch.from_numpy(images.copy()).to(torch.float32).unsqueeze(1) / 255.0
    return x, torch.from_numpy(labels.astype(np.int64))
