"""Reader for the IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the data. Every field is checked,
so a corrupt or truncated file fails with a message naming it instead of producing
garbage arrays. What to do about it depends on where the file came from, which the split
stage knows (`pipeline.datasets.manifest.damaged_file_advice`).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.core.errors import DataError, MissingInputError

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
# More than any IDX dataset holds (EMNIST's largest, by class, has 0.55 GB of images): a header promising
# more is corrupt, and reading on would only fill memory with a gzip bomb.
MAX_IDX_BYTES = 1 << 31
_CHUNK = 1 << 20  # what one read may allocate before its bytes arrive
# Read past the promised data: a file longer by up to this much is told exactly how long it is.
_EXTRA = 1 << 20


class IdxFormatError(DataError):
    """An IDX file is corrupt, truncated or not what the caller expected; `path` is that file."""


def read_idx(path: str | Path, expected_dims: int) -> np.ndarray:
    """Read a (possibly gzipped) IDX file of unsigned bytes with `expected_dims` dimensions.

    The header is checked before the data is read, and the data is read no further than the header
    promises (and a little more, to tell a longer file): a lying header or a gzip bomb costs what the
    file really holds, never what its header says. The array is read-only.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data, shape = _read_data(handle, path, expected_dims)
    except FileNotFoundError:
        raise MissingInputError(f"{path}: missing; run the download stage (`dvc repro` runs it)") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _read_data(handle: BinaryIO, path: Path, expected_dims: int) -> tuple[bytes, tuple[int, ...]]:
    """The data bytes of the open IDX file `handle`, checked against the shape its header declares."""
    # Decided by content, not by name: a copy may have been decompressed and kept its name.
    gzipped = handle.read(2) == _GZIP_MAGIC
    handle.seek(0)
    stream = gzip.GzipFile(fileobj=handle) if gzipped else handle
    try:
        shape, header = _read_header(stream, path, expected_dims)
        expected = math.prod(shape)  # Python's ints: NumPy's int64 wraps at 2**63 (2**31 x 2**31 x 4 gave 0)
        if expected > MAX_IDX_BYTES:
            raise IdxFormatError(
                f"{path}: header promises shape {shape} = {expected:,} bytes of data, more than the "
                f"{MAX_IDX_BYTES:,} an IDX dataset has; the file is corrupt",
                path,
            )
        if not gzipped:  # the file's size says whether the data is all there, before reading it
            _check_length(path, shape, expected, os.fstat(handle.fileno()).st_size - header)
        data = _read_at_most(stream, expected + _EXTRA)
        longer = len(data) == expected + _EXTRA and stream.read(1)
    except (OSError, EOFError, zlib.error) as error:
        raise IdxFormatError(f"{path}: cannot decompress ({error}), the file is corrupt or truncated", path) from error
    if longer:
        raise IdxFormatError(
            f"{path}: header promises shape {shape} = {expected} bytes of data, found more than "
            f"{len(data)}; the file is corrupt",
            path,
        )
    _check_length(path, shape, expected, len(data))
    return data, shape


def _read_header(stream: BinaryIO, path: Path, expected_dims: int) -> tuple[tuple[int, ...], int]:
    """The shape an IDX header declares, and the header's length."""
    magic = stream.read(4)
    if len(magic) < 4:
        raise IdxFormatError(f"{path}: {len(magic)} bytes is too short for an IDX header", path)
    zero, dtype, dims = struct.unpack(">HBB", magic)
    if zero != 0 or dtype != _UBYTE:
        raise IdxFormatError(
            f"{path}: bad magic number 0x{magic.hex()}, "
            f"expected 0x0000{_UBYTE:02x}{expected_dims:02x} (an IDX file of unsigned bytes)",
            path,
        )
    if dims != expected_dims:
        raise IdxFormatError(f"{path}: has {dims} dimensions, expected {expected_dims}", path)
    header = 4 + 4 * dims
    sizes = stream.read(4 * dims)
    if len(sizes) < 4 * dims:
        raise IdxFormatError(f"{path}: truncated header ({4 + len(sizes)} bytes, need {header})", path)
    return struct.unpack(f">{dims}I", sizes), header


def _check_length(path: Path, shape: tuple[int, ...], expected: int, found: int) -> None:
    if found != expected:
        raise IdxFormatError(
            f"{path}: header promises shape {shape} = {expected} bytes of data, "
            f"found {found}; the file is truncated or corrupt",
            path,
        )


def _read_at_most(stream: BinaryIO, count: int) -> bytes:
    """Up to `count` bytes, in chunks: one read(count) would allocate `count` bytes before any arrived."""
    chunks, left = [], count
    while left > 0 and (chunk := stream.read(min(left, _CHUNK))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def is_idx(path: str | Path, dims: int) -> bool:
    """Whether `path` (possibly gzipped) starts as an IDX file of unsigned bytes with `dims` dimensions."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head[:2] == _GZIP_MAGIC:
        try:
            with gzip.open(path) as handle:
                head = handle.read(4)
        except (OSError, EOFError, zlib.error):
            return False
    return head == struct.pack(">HBB", 0, _UBYTE, dims)


def read_images_and_labels(images: Path, labels: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A pair of IDX files as (N, H, W, 1) uint8 images and int64 labels, cross-checked."""
    x = read_idx(images, 3)
    y = read_idx(labels, 1)
    if len(x) != len(y):
        raise IdxFormatError(
            f"{images} holds {len(x)} images but {labels} holds {len(y)} labels; "
            "they must be the matching pair of one dataset",
            labels,
        )
    if y.size and int(y.max()) >= num_classes:
        bad = int(np.argmax(y >= num_classes))
        raise IdxFormatError(
            f"{labels}: label {int(y[bad])} at index {bad} is out of range 0..{num_classes - 1}", labels
        )
    return x[..., np.newaxis], y.astype(np.int64)
