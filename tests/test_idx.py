"""The IDX reader: valid files decode exactly; every kind of damage fails with an error naming the file."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets import mnist
from pipeline.datasets.idx import IdxFormatError, read_idx, read_images_and_labels
from tests.conftest import SHARED_DATASETS, idx_bytes
from tests.fuzzing import peak_memory

IMAGES = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
LABELS = np.array([0, 9, 4], dtype=np.uint8)


def at(path: Path) -> str:
    """`path` as a regex: error messages must name the file."""
    return re.escape(str(path))


def write(path: Path, data: bytes, gz: bool = True) -> Path:
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_reads_images_and_labels_exactly(gz: bool, tmp_path: Path) -> None:
    suffix = ".gz" if gz else ""
    images = write(tmp_path / f"images-idx3-ubyte{suffix}", idx_bytes(IMAGES), gz)
    labels = write(tmp_path / f"labels-idx1-ubyte{suffix}", idx_bytes(LABELS), gz)
    x, y = read_images_and_labels(images, labels, num_classes=10)
    assert x.shape == (3, 4, 5, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[..., 0], IMAGES)
    assert y.dtype == np.int64 and y.tolist() == [0, 9, 4]


def test_gzip_is_recognised_by_content_not_by_name(tmp_path: Path) -> None:
    plain_named_gz = write(tmp_path / "images.gz", idx_bytes(IMAGES), gz=False)
    gz_named_plain = write(tmp_path / "images", idx_bytes(IMAGES), gz=True)
    np.testing.assert_array_equal(read_idx(plain_named_gz, 3), IMAGES)
    np.testing.assert_array_equal(read_idx(gz_named_plain, 3), IMAGES)


def test_an_empty_dataset_is_valid(tmp_path: Path) -> None:
    images = write(tmp_path / "images.gz", idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    labels = write(tmp_path / "labels.gz", idx_bytes(np.zeros(0, np.uint8)))
    x, y = read_images_and_labels(images, labels, 10)
    assert x.shape == (0, 28, 28, 1) and y.shape == (0,)


@pytest.mark.parametrize("magic", [b"\x00\x00\x0d\x03", b"\x12\x34\x08\x03", b"PK\x03\x04"])
def test_a_bad_magic_number_is_rejected(magic: bytes, tmp_path: Path) -> None:
    path = write(tmp_path / "images.gz", magic + idx_bytes(IMAGES)[4:])
    with pytest.raises(IdxFormatError, match=rf"{at(path)}: bad magic number 0x{magic.hex()}, expected 0x00000803"):
        read_idx(path, 3)


def test_a_labels_file_where_images_are_expected_names_the_dimensions(tmp_path: Path) -> None:
    path = write(tmp_path / "labels.gz", idx_bytes(LABELS))
    with pytest.raises(IdxFormatError, match=rf"{at(path)}: has 1 dimensions, expected 3"):
        read_idx(path, 3)


@pytest.mark.parametrize("keep", [0, 3, 4, 9])
def test_a_truncated_header_is_rejected(keep: int, tmp_path: Path) -> None:
    path = write(tmp_path / "images.gz", idx_bytes(IMAGES)[:keep])
    with pytest.raises(IdxFormatError, match=rf"{at(path)}: .*(too short|truncated header)"):
        read_idx(path, 3)


@pytest.mark.parametrize("change", [-1, -20, +1])
def test_data_shorter_or_longer_than_the_header_promises_is_rejected(change: int, tmp_path: Path) -> None:
    data = idx_bytes(IMAGES)
    data = data[:change] if change < 0 else data + b"\x00" * change
    path = write(tmp_path / "images.gz", data)
    with pytest.raises(
        IdxFormatError,
        match=rf"{at(path)}: header promises shape \(3, 4, 5\) = 60 bytes of data, "
        rf"found {60 + change}",
    ):
        read_idx(path, 3)


def test_counts_in_the_header_are_checked_against_the_data(tmp_path: Path) -> None:
    lying = struct.pack(">HBBIII", 0, 0x08, 3, 4, 4, 5) + IMAGES.tobytes()  # says 4 images, holds 3
    path = write(tmp_path / "images.gz", lying)
    with pytest.raises(IdxFormatError, match=rf"{at(path)}: header promises shape \(4, 4, 5\) = 80 bytes"):
        read_idx(path, 3)


@pytest.mark.parametrize("damage", ["truncated gzip", "corrupt gzip"])
def test_a_damaged_gzip_is_rejected(damage: str, tmp_path: Path) -> None:
    compressed = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 256, (20, 8, 8), dtype=np.uint8)))
    if damage == "truncated gzip":
        compressed = compressed[: len(compressed) // 2]
    else:
        middle = len(compressed) // 2
        flipped = bytes(byte ^ 0xFF for byte in compressed[middle : middle + 8])
        compressed = compressed[:middle] + flipped + compressed[middle + 8 :]
    path = tmp_path / "images.gz"
    path.write_bytes(compressed)
    with pytest.raises(IdxFormatError, match=rf"{at(path)}: cannot decompress .* corrupt or truncated"):
        read_idx(path, 3)


def test_sizes_whose_product_passes_int64_are_refused(tmp_path: Path) -> None:
    # Found reading the reader for tests/test_properties_readers.py: np.prod in int64 made 2**31 x 2**31 x 4
    # bytes 0, so an empty body matched and reshape raised ValueError.
    path = write(tmp_path / "images.gz", struct.pack(">HBBIII", 0, 0x08, 3, 2**31, 2**31, 4))
    with pytest.raises(
        IdxFormatError,
        match=rf"{at(path)}: header promises shape \(2147483648, 2147483648, 4\) = "
        r"18,446,744,073,709,551,616 bytes of data, more than the 2,147,483,648",
    ):
        read_idx(path, 3)


def gzip_bomb(path: Path, start: bytes) -> Path:
    """`start`, then 64 MB of zeros, in 64 KB of gzip."""
    with gzip.GzipFile(path, "wb", mtime=0) as gz:
        gz.write(start)
        for _ in range(64):
            gz.write(bytes(1 << 20))
    return path


def test_a_gzip_bomb_is_refused_before_it_is_decompressed(tmp_path: Path) -> None:
    # Found by tests/test_properties_readers.py: the whole file was decompressed before its header was read.
    # 64 KB that decompress to 64 MB, under a header promising 2**31 images of 28x28 pixels (1.7 TB).
    path = gzip_bomb(tmp_path / "bomb.gz", struct.pack(">HBBIII", 0, 0x08, 3, 2**31, 28, 28))
    with peak_memory(4 << 20), pytest.raises(IdxFormatError, match=r"1,683,627,180,032 bytes of data, more than"):
        read_idx(path, 3)


def test_a_gzip_holding_far_more_than_its_header_promises_is_read_no_further(tmp_path: Path) -> None:
    # The same bomb under a header it does not fill: 60 bytes promised, 64 MB there.
    path = gzip_bomb(tmp_path / "long.gz", idx_bytes(IMAGES))
    with peak_memory(8 << 20), pytest.raises(IdxFormatError, match=r"= 60 bytes of data, found more than 1048636; the"):
        read_idx(path, 3)


def test_a_label_count_different_from_the_image_count_names_both_files(tmp_path: Path) -> None:
    images = write(tmp_path / "train-images.gz", idx_bytes(IMAGES))
    labels = write(tmp_path / "t10k-labels.gz", idx_bytes(LABELS[:2]))
    with pytest.raises(IdxFormatError, match=rf"{at(images)} holds 3 images but {at(labels)} holds 2 labels"):
        read_images_and_labels(images, labels, 10)


def test_a_label_out_of_range_is_rejected(tmp_path: Path) -> None:
    images = write(tmp_path / "images.gz", idx_bytes(IMAGES))
    labels = write(tmp_path / "labels.gz", idx_bytes(np.array([0, 10, 3], np.uint8)))
    with pytest.raises(IdxFormatError, match=rf"{at(labels)}: label 10 at index 1 is out of range 0..9"):
        read_images_and_labels(images, labels, 10)


def test_mnist_spec_reads_the_four_files_of_a_folder(tmp_path: Path) -> None:
    for name, array in (
        (mnist.TRAIN_IMAGES, IMAGES),
        (mnist.TRAIN_LABELS, LABELS),
        (mnist.TEST_IMAGES, IMAGES[:2]),
        (mnist.TEST_LABELS, LABELS[:2]),
    ):
        write(tmp_path / name, idx_bytes(array))
    raw = mnist.SPEC.read(tmp_path, {})
    assert raw.train_x.shape == (3, 4, 5, 1) and raw.test_x.shape == (2, 4, 5, 1)
    assert raw.train_y.tolist() == [0, 9, 4] and raw.train_groups is None


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATASETS / "mnist").is_dir(), reason="../shared/datasets/mnist is absent")
def test_real_mnist_decodes() -> None:
    raw = mnist.SPEC.read(SHARED_DATASETS / "mnist", {})
    assert raw.train_x.shape == (60000, 28, 28, 1) and raw.test_x.shape == (10000, 28, 28, 1)
    assert np.bincount(raw.train_y).tolist()[:3] == [5923, 6742, 5958]
    assert raw.train_x.max() == 255
