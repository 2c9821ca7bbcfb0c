"""The dataset registry: one module per dataset declares where its files come from, how
they are checked and read, and what its classes are called.

Adding a dataset means writing one module that builds a `DatasetSpec`, registering it in
`REGISTRY` below, and adding its block to params.yaml. Also here: reading the official formats
(IDX, GTSRB's PPMs and CSVs), image decoding, and archive safety. May import: core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RemoteFile:
    """One official file and the checksums it is verified against.

    `payload_md5` is the md5 of the decompressed content of a `.gz` file: it lets a
    repackaged copy (e.g. Debian's recompressed archives) be accepted on what matters,
    the bytes inside, while a corrupt copy is still rejected.
    """

    name: str
    md5: str
    size: int | None = None
    payload_md5: str | None = None


@dataclass
class RawData:
    """A dataset decoded from its official files: uint8 NHWC images and int labels.

    `train_groups` names the recording group of each training image (GTSRB's tracks);
    images of one group are never split between train and validation. None: every
    image is its own group.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    train_groups: np.ndarray | None = None


@dataclass(frozen=True)
class DatasetSpec:
    key: str
    title: str
    files: tuple[RemoteFile, ...]
    # Base URLs tried in order after the user's own sources: official hosts, then known mirrors.
    urls: tuple[str, ...]
    class_names: tuple[str, ...]
    # Decodes the verified files in `raw_dir` with the dataset's own options from params.
    read: Callable[[Path, dict[str, Any]], RawData]
    # The (height, width, channels) of the images `read` gives, for those options: what the
    # designs are checked against when params load, before any data exists.
    image_shape: Callable[[dict[str, Any]], tuple[int, int, int]]
    # Options this dataset accepts in params.yaml beyond the common ones: name -> (checker, default).
    options: dict[str, tuple[Callable[[Any, str], Any], Any]] = field(default_factory=dict)
    # For datasets users often keep unpacked: finds the official layout already extracted in a
    # local folder and returns {path inside data/raw/<key>: path to copy from}, or None.
    extracted_parts: Callable[[Path], dict[str, Path] | None] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _registry() -> dict[str, DatasetSpec]:
    from pipeline.datasets import fashion_mnist, gtsrb, mnist

    return {spec.key: spec for spec in (mnist.SPEC, fashion_mnist.SPEC, gtsrb.SPEC)}


REGISTRY: dict[str, DatasetSpec] = _registry()


def get(key: str) -> DatasetSpec:
    try:
        return REGISTRY[key]
    except KeyError:
        raise KeyError(f"unknown dataset {key!r}; known: {', '.join(REGISTRY)}") from None
