"""MNIST: 70,000 28x28 handwritten digits (LeCun, Cortes, Burges)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.datasets import DatasetSpec, RawData, RemoteFile
from pipeline.datasets.idx import read_images_and_labels

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"


def read_idx_dataset(raw_dir: Path, num_classes: int) -> RawData:
    """The four IDX files shared by MNIST and Fashion-MNIST."""
    train_x, train_y = read_images_and_labels(raw_dir / TRAIN_IMAGES, raw_dir / TRAIN_LABELS, num_classes)
    test_x, test_y = read_images_and_labels(raw_dir / TEST_IMAGES, raw_dir / TEST_LABELS, num_classes)
    return RawData(train_x, train_y, test_x, test_y)


def _read(raw_dir: Path, options: dict[str, Any]) -> RawData:
    return read_idx_dataset(raw_dir, 10)


SPEC = DatasetSpec(
    key="mnist",
    title="MNIST handwritten digits",
    # Published md5s and sizes; payload md5s are of the decompressed IDX files.
    files=(
        RemoteFile(TRAIN_IMAGES, "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422, "6bbc9ace898e44ae57da46a324031adb"),
        RemoteFile(TRAIN_LABELS, "d53e105ee54ea40749a09fcbcd1e9432", 28881, "a25bea736e30d166cdddb491f175f624"),
        RemoteFile(TEST_IMAGES, "9fb629c4189551a2d022fa330f9573f3", 1648877, "2646ac647ad5339dbf082846283269ea"),
        RemoteFile(TEST_LABELS, "ec29112dd5afa0611ce80d1b7f02629c", 4542, "27ae3e4e09519cfbb04c329615203637"),
    ),
    urls=(
        "https://yann.lecun.com/exdb/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    class_names=tuple(str(digit) for digit in range(10)),
    read=_read,
    image_shape=lambda options: (28, 28, 1),
)
