"""GTSRB: the German Traffic Sign Recognition Benchmark (Stallkamp et al. 2012), 43 classes.

Images come in tracks of 30 frames of one physical sign; the split stage keeps each track
on one side of the train/validation line (see `RawData.train_groups`).

The raw folder normally holds the three official archives (the download stage verifies
them). A copy that is already extracted in the official layout is read as it is, without
re-packing: `find_extracted_layout` says where its parts are. Each of the three parts
comes from its archive when the archive is present, else from the extracted folders.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import validate as v
from pipeline.core.errors import MissingInputError
from pipeline.datasets import DatasetSpec, RawData, RemoteFile
from pipeline.datasets.archive import safe_extract_zip
from pipeline.datasets.gtsrb_reader import CLASS_NAMES, NUM_CLASSES, GtsrbFormatError, read_test_set, read_training_set

log = logging.getLogger(__name__)

TRAIN_ZIP = "GTSRB_Final_Training_Images.zip"
TEST_ZIP = "GTSRB_Final_Test_Images.zip"
TEST_GT_ZIP = "GTSRB_Final_Test_GT.zip"
TEST_GT_CSV = "GT-final_test.csv"
_TRAIN_IMAGES = ("GTSRB/Final_Training/Images", "Final_Training/Images")
_TEST_IMAGES = ("GTSRB/Final_Test/Images", "Final_Test/Images")
_TEST_GT_PLACES = ("", "GTSRB", "GTSRB/Final_Test", "GTSRB/Final_Test/Images", "Final_Test", "Final_Test/Images")


@dataclass(frozen=True)
class ExtractedLayout:
    """Where the parts of an extracted GTSRB copy are.

    train_root / test_root: folders that `read_training_set` / `read_test_set` accept (each
    holds ``GTSRB/Final_Training/Images`` / ``GTSRB/Final_Test/Images``, or the same without
    the ``GTSRB/`` level); test_gt_csv: ``GT-final_test.csv``, the test labels.
    """

    train_root: Path
    test_root: Path
    test_gt_csv: Path


def find_extracted_layout(folder: str | os.PathLike[str]) -> ExtractedLayout | None:
    """The official layout already extracted under `folder`, or None if any part is missing.

    Recognised: the three archives extracted into `folder` itself (``GTSRB/Final_Training/
    Images/000NN/``, ``GTSRB/Final_Test/Images/``, ``GT-final_test.csv``), or each into a
    subfolder named after its archive (``GTSRB_Final_Training_Images/GTSRB/…``), or `folder`
    being the ``GTSRB`` folder. ``GT-final_test.csv`` may also sit beside the test images.
    Only folder and file names are checked here; the reader validates the contents.
    """
    folder = Path(folder)
    train_root = _find_root(folder, TRAIN_ZIP, _TRAIN_IMAGES)
    test_root = _find_root(folder, TEST_ZIP, _TEST_IMAGES)
    test_gt_csv = _find_test_gt(folder)
    if train_root is None or test_root is None or test_gt_csv is None:
        return None
    return ExtractedLayout(train_root, test_root, test_gt_csv)


def extracted_parts(folder: Path) -> dict[str, Path] | None:
    """The extracted layout under `folder`, as {path inside data/raw/gtsrb: where it is now}."""
    layout = find_extracted_layout(folder)
    if layout is None:
        return None
    train = next(layout.train_root / sub for sub in _TRAIN_IMAGES if (layout.train_root / sub).is_dir())
    test = next(layout.test_root / sub for sub in _TEST_IMAGES if (layout.test_root / sub).is_dir())
    return {_TRAIN_IMAGES[0]: train, _TEST_IMAGES[0]: test, TEST_GT_CSV: layout.test_gt_csv}


def _candidate_roots(folder: Path, archive: str) -> list[Path]:
    return [folder, folder / archive.removesuffix(".zip")]


def _find_root(folder: Path, archive: str, images_subdirs: tuple[str, ...]) -> Path | None:
    for root in _candidate_roots(folder, archive):
        if any((root / sub).is_dir() for sub in images_subdirs):
            return root
    return None


def _find_test_gt(folder: Path) -> Path | None:
    for root in _candidate_roots(folder, TEST_GT_ZIP) + _candidate_roots(folder, TEST_ZIP)[1:]:
        for place in _TEST_GT_PLACES:
            if (root / place / TEST_GT_CSV).is_file():
                return root / place / TEST_GT_CSV
    return None


def _read(raw_dir: Path, options: dict[str, Any]) -> RawData:
    """Decode the training and test sets in `raw_dir`: from the archives, else an extracted copy."""
    raw_dir = Path(raw_dir)
    size, crop = options["image_size"], options["crop_roi"]
    # Extracted into the system temp folder (TMPDIR), never beside `raw_dir`: that may be a
    # shared read-only copy. Up to ~300 MB for the official archives; removed afterwards.
    with tempfile.TemporaryDirectory(prefix="gtsrb-extract-") as work:
        train_root = _part(
            raw_dir, TRAIN_ZIP, Path(work), _find_root(raw_dir, TRAIN_ZIP, _TRAIN_IMAGES), "training images"
        )
        test_root = _part(raw_dir, TEST_ZIP, Path(work), _find_root(raw_dir, TEST_ZIP, _TEST_IMAGES), "test images")
        gt = _part(raw_dir, TEST_GT_ZIP, Path(work), _find_test_gt(raw_dir), f"test ground truth {TEST_GT_CSV}")
        gt_csv = gt if gt.is_file() else _find_test_gt(gt)
        if gt_csv is None:
            raise MissingInputError(
                f"{raw_dir / TEST_GT_ZIP}: has no {TEST_GT_CSV}; expected the official test ground-truth archive"
            )
        try:
            train = read_training_set(train_root, size=size, crop_roi=crop)
            test = read_test_set(test_root, gt_csv, size=size, crop_roi=crop)
        except GtsrbFormatError as error:
            raise _in_archives(error, Path(work), raw_dir) from None
    missing = sorted(set(range(NUM_CLASSES)).difference(train.labels.tolist()))
    if missing:
        # Not an error: small copies for experiments may hold a few classes only.
        log.warning(
            "GTSRB training set has no images of class(es) %s: the model still has %d outputs",
            ", ".join(map(str, missing)),
            NUM_CLASSES,
        )
    return RawData(train.images, train.labels, test.images, test.labels, train_groups=train.groups)


def _in_archives(error: GtsrbFormatError, work: Path, raw_dir: Path) -> GtsrbFormatError:
    """`error` with the paths of the temporary extraction (gone once it is raised) written as paths
    inside the archives they came from (`data/raw/gtsrb/GTSRB_Final_Test_GT.zip/GT-final_test.csv`)."""
    message, path = str(error), error.path
    for archive in (TRAIN_ZIP, TEST_ZIP, TEST_GT_ZIP):
        extracted, inside = os.path.join(work, archive.removesuffix(".zip")), str(raw_dir / archive)
        message = message.replace(extracted, inside)
        if path is not None and path.startswith(extracted):
            path = inside  # the file to replace is the archive
    return GtsrbFormatError(message, path, error.line)


def _part(raw_dir: Path, archive: str, work: Path, extracted: Path | None, what: str) -> Path:
    """One part of the dataset: `archive` extracted under `work` if present, else the `extracted` copy."""
    if (raw_dir / archive).is_file():
        return safe_extract_zip(raw_dir / archive, work / archive.removesuffix(".zip"))
    if extracted is not None:
        log.info("%s: no %s, reading the extracted %s at %s", raw_dir, archive, what, extracted)
        return extracted
    raise MissingInputError(
        f"{raw_dir}: neither {archive} nor the extracted {what} was found; expected the official archives "
        f"{TRAIN_ZIP}, {TEST_ZIP} and {TEST_GT_ZIP} (run the download stage), or their contents extracted "
        f"there in the official layout (GTSRB/Final_Training/Images/000NN/, GTSRB/Final_Test/Images/, "
        f"{TEST_GT_CSV})"
    )


SPEC = DatasetSpec(
    key="gtsrb",
    title="German Traffic Sign Recognition Benchmark",
    # The official archives' md5s (their sizes are not published, so size is not checked).
    files=(
        RemoteFile(TRAIN_ZIP, "f33fd80ac59bff73c82d25ab499e03a3"),
        RemoteFile(TEST_ZIP, "c7e4e6327067d32654124b0fe9e82185"),
        RemoteFile(TEST_GT_ZIP, "fe31e9c9270bbcd7b84b7f21a9d9d9e5"),
    ),
    urls=("https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/",),
    class_names=CLASS_NAMES,
    read=_read,
    image_shape=lambda options: (options["image_size"], options["image_size"], 3),  # resized, in colour
    extracted_parts=extracted_parts,
    options={
        "image_size": (lambda x, w: v.integer(x, w, 8, 256), 32),
        "crop_roi": (v.boolean, True),
    },
)
