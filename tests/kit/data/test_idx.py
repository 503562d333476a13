"""IDX reader and MNIST directory loader on small real IDX files written here (plain and gzipped),
including missing, truncated and corrupt ones."""
import gzip
import struct

import numpy as np
import pytest
import torch

from margreg_fast.kit.data import DataFileError, load_mnist_dir, read_idx


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """Serialise ``array`` in IDX: magic (0, 0, code, ndim), big-endian uint32 dims, big-endian data."""
    dt = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=dt).tobytes()


def write(path, data: bytes, gz: bool):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_mnist(tmp_path, prefix, images, labels, gz):
    ext = ".gz" if gz else ""
    write(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", idx_bytes(images), gz)
    write(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", idx_bytes(labels), gz)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
def test_read_idx_roundtrip(tmp_path, gz, code):
    rng = np.random.default_rng(code)
    arr = rng.integers(-100 if code != 0x08 else 0, 100, size=(3, 4, 5)).astype(np.float64)
    if code in (0x0D, 0x0E):
        arr = arr / 7.0
    path = write(tmp_path / "a.idx", idx_bytes(arr, code), gz)
    out = read_idx(path)
    assert out.shape == (3, 4, 5)
    expected = arr.astype({0x0D: np.float32}.get(code, arr.dtype))
    np.testing.assert_array_equal(out, expected)  # exact: every value is representable in the file type


def test_read_idx_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = write(tmp_path / "no_gz_suffix", idx_bytes(arr), gz=True)
    np.testing.assert_array_equal(read_idx(path), arr)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_errors_name_the_file(tmp_path, gz):
    good = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    cases = {
        "missing": None,
        "empty": b"",
        "short_header": good[:6],
        "bad_magic": b"\x01\x02" + good[2:],
        "bad_type": good[:2] + b"\x42" + good[3:],
        "truncated": good[:-1],
        "trailing": good + b"\x00",
        "wrong_dims": good[:4] + struct.pack(">3I", 2, 3, 5) + good[16:],
        "absurd_dims": good[:4] + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1) + good[16:],
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.idx"
        if data is not None:
            write(path, data, gz)
        with pytest.raises(DataFileError, match=str(path).replace(".", r"\.")):
            read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8).reshape(10, 100)))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match="cut.gz"):
        read_idx(cut)
    garbled = tmp_path / "garbled.gz"
    garbled.write_bytes(data[:10] + bytes(b ^ 0xFF for b in data[10:30]) + data[30:])
    with pytest.raises(DataFileError, match="garbled.gz"):
        read_idx(garbled)
    assert issubclass(DataFileError, ValueError)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_load_mnist_dir(tmp_path, gz, train):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    write_mnist(tmp_path, "train" if train else "t10k", images, labels, gz)
    x, y = load_mnist_dir(tmp_path, train=train)
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (7,) and y.dtype == torch.int64
    assert x[0, 0, 0, 0] == 0 and x[0, 0, 0, 1] == 1
    torch.testing.assert_close(x, torch.from_numpy(images).float().unsqueeze(1) / 255, rtol=0, atol=0)
    assert y.tolist() == labels.tolist()


def test_load_mnist_dir_errors(tmp_path):
    with pytest.raises(DataFileError, match="nowhere"):
        load_mnist_dir(tmp_path / "nowhere", train=True)
    with pytest.raises(DataFileError, match="train-images-idx3-ubyte"):
        load_mnist_dir(tmp_path, train=True)
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(images), gz=False)
    with pytest.raises(DataFileError, match="train-labels-idx1-ubyte"):
        load_mnist_dir(tmp_path, train=True)
    # label count disagreeing with the image count
    write(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(np.zeros(4, dtype=np.uint8)), gz=True)
    with pytest.raises(DataFileError, match="4 labels for 5 images"):
        load_mnist_dir(tmp_path, train=True)
    # truncated gzip image file of the test split
    blob = gzip.compress(idx_bytes(images))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(blob[:-8])
    write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(5, dtype=np.uint8)), gz=True)
    with pytest.raises(DataFileError, match="t10k-images-idx3-ubyte.gz"):
        load_mnist_dir(tmp_path, train=False)
    # labels stored as a 2-d array
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(blob)
    write(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros((5, 1), dtype=np.uint8)), gz=True)
    with pytest.raises(DataFileError, match="t10k-labels-idx1-ubyte.gz"):
        load_mnist_dir(tmp_path, train=False)
