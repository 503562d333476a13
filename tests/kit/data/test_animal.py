"""The second dataset: the animal-mnist wheel's silhouettes, read from its files, and BlockMNIST on them."""
import gzip
import hashlib
import importlib.metadata
import pickle

import numpy as np
import pytest
import torch

from margreg_fast.kit.data import DataFileError, load_animal, make_blockmnist, null_patch
from margreg_fast.kit.data.animal import VERSION, load_array
from margreg_fast.kit.experiments.config import ExperimentConfig
from margreg_fast.kit.experiments.datasets import build_datasets

#: sha256 of the first image's 784 uint8 bytes (row-major), as stored in animal_data_version_3.gz of 0.4.
FIRST_IMAGE_SHA256 = "a067963aa5a745c6c8818e9569256ec4515b5a74206586669b36444b86a9dbd1"


@pytest.fixture(scope="module")
def animal():
    return load_animal()


def test_the_installed_package_is_the_pinned_mit_release():
    meta = importlib.metadata.metadata("animal_mnist")
    assert meta["Version"] == VERSION and meta["License"] == "MIT"
    licence = [f for f in importlib.metadata.files("animal_mnist") if f.name == "LICENSE"]
    text = licence[0].read_text() if licence else ""
    assert "MIT License" in text and "Permission is hereby granted" in text


def test_loader_shape_range_counts_and_checksum(animal):
    x, y = animal
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10_000,) and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 1
    assert torch.equal(torch.round(x * 255), x * 255)  # source values are the integers 0..255
    assert y.min() == 0 and y.max() == 9 and y.bincount().tolist() == [1000] * 10
    first = torch.round(x[0, 0] * 255).to(torch.uint8).numpy()
    assert hashlib.sha256(first.tobytes()).hexdigest() == FIRST_IMAGE_SHA256


def test_the_unpickler_builds_arrays_and_refuses_any_other_global():
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert np.array_equal(load_array(gzip.compress(pickle.dumps(arr)), "arr"), arr)
    with pytest.raises(DataFileError, match="refusing to load posix.system|refusing to load os.system|only numpy"):
        load_array(gzip.compress(pickle.dumps(__import__("os").system)), "evil")
    with pytest.raises(DataFileError, match="expected a numpy array"):
        load_array(gzip.compress(pickle.dumps([1, 2])), "list")


def test_blockmnist_geometry_on_the_animals(animal):
    cfg = ExperimentConfig(dataset="animal", schemes=("none",))
    train, test = build_datasets(cfg, 0)
    assert (len(train), len(test)) == (8000, 2000)  # test_fraction 0.2 of 10,000
    assert train.x.shape[1:] == (1, 56, 28) and test.null_mask.shape == test.x.shape
    x, y = animal
    ds = make_blockmnist(x[:64], y[:64], seed=0, patch_size=11)
    null = torch.where(ds.null_mask[:, :, :28].all(dim=(1, 2, 3))[:, None, None, None], ds.x[:, :, :28], ds.x[:, :, 28:])
    assert torch.equal(null, null_patch(28, 28, 11).expand(64, 1, 28, 28))
