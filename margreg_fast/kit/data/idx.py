"""Reader for the IDX format of MNIST / Fashion-MNIST (gzipped or plain).

Layout: two zero bytes, a type code, the number of dimensions n, then n big-endian uint32 sizes,
then the data, big-endian, in C order. The file must hold exactly prod(sizes) items.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from .types import DataFileError

#: IDX type code -> numpy dtype (big-endian).
IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise DataFileError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({exc})") from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFileError(f"{path}: corrupt or truncated gzip data ({exc})") from exc


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip detected from its magic bytes, not its name) into a numpy array.

    Raises DataFileError naming the file if it is missing, not IDX (bad magic or type code),
    truncated, or longer than its header says.
    """
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataFileError(f"{path}: truncated IDX file ({len(raw)} bytes, no complete header)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataFileError(f"{path}: not an IDX file (bad magic bytes {raw[:4].hex()})")
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path}: truncated IDX header (expected {ndim} dimension sizes)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow for absurd headers
    got = len(raw) - header
    if got != expected:
        kind = "truncated" if got < expected else "corrupt (trailing bytes)"
        raise DataFileError(f"{path}: {kind} IDX data: header shape {shape} needs {expected} bytes, found {got}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
