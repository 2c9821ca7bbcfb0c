"""Fashion-MNIST: 70,000 28x28 images of clothing in 10 classes (Xiao, Rasul, Vollgraf 2017).

Debian's `dataset-fashion-mnist` recompresses the `.gz` files, so their md5s differ from
upstream while the decompressed payloads are identical: the payload md5s below let such a
copy be used as a source without trusting anything but the bytes inside. Offline, after
`apt-get install dataset-fashion-mnist`, set `datasets.fashion_mnist.source` (or the env var
PIPELINE_SOURCE_FASHION_MNIST) to /usr/share/datasets/fashion-mnist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.datasets import DatasetSpec, RawData, RemoteFile
from pipeline.datasets.mnist import TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, read_idx_dataset


def _read(raw_dir: Path, options: dict[str, Any]) -> RawData:
    return read_idx_dataset(raw_dir, 10)


SPEC = DatasetSpec(
    key="fashion_mnist",
    title="Fashion-MNIST",
    files=(
        RemoteFile(TRAIN_IMAGES, "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880, "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        RemoteFile(TRAIN_LABELS, "25c81989df183df01b3e8a0aad5dffbe", 29515, "9018921c3c673c538a1fc5bad174d6f9"),
        RemoteFile(TEST_IMAGES, "bef4ecab320f06d8554ea6380940ec79", 4422102, "8181f5470baa50b63fa0f6fddb340f0a"),
        RemoteFile(TEST_LABELS, "bb300cfdad3c16e7a12a480ee83cd310", 5148, "15d484375f8d13e6eb1aabb0c3f46965"),
    ),
    urls=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ),
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    read=_read,
    image_shape=lambda options: (28, 28, 1),
)
