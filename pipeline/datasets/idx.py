"""Reader for the IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the data. Every field is checked,
so a corrupt or truncated file fails with a message naming it instead of producing
garbage arrays. What to do about it depends on where the file came from, which the split
stage knows (`pipeline.datasets.manifest.damaged_file_advice`).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError, MissingInputError

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(DataError):
    """An IDX file is corrupt, truncated or not what the caller expected; `path` is that file."""


def read_idx(path: str | Path, expected_dims: int) -> np.ndarray:
    """Read a (possibly gzipped) IDX file of unsigned bytes with `expected_dims` dimensions.

    The array is read-only: it is a view of the file's bytes, not a copy.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MissingInputError(f"{path}: missing; run the download stage (`dvc repro` runs it)") from None
    # Decided by content, not by name: a copy may have been decompressed and kept its name.
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise IdxFormatError(
                f"{path}: cannot decompress ({error}), the file is corrupt or truncated", path
            ) from error
    if len(raw) < 4:
        raise IdxFormatError(f"{path}: {len(raw)} bytes is too short for an IDX header", path)
    zero, dtype, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _UBYTE:
        raise IdxFormatError(
            f"{path}: bad magic number 0x{raw[:4].hex()}, "
            f"expected 0x0000{_UBYTE:02x}{expected_dims:02x} (an IDX file of unsigned bytes)",
            path,
        )
    if dims != expected_dims:
        raise IdxFormatError(f"{path}: has {dims} dimensions, expected {expected_dims}", path)
    header = 4 + 4 * dims
    if len(raw) < header:
        raise IdxFormatError(f"{path}: truncated header ({len(raw)} bytes, need {header})", path)
    shape = struct.unpack(f">{dims}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise IdxFormatError(
            f"{path}: header promises shape {shape} = {expected} bytes of data, "
            f"found {len(raw) - header}; the file is truncated or corrupt",
            path,
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


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
