"""Classify images with a trained model, each prepared exactly as its training images were.

`python -m pipeline predict DATASET DESIGN PATH... [--seed N] [--labels CSV] [--json]`

PATH: image files (PPM, PNG, JPEG), folders of them (read recursively), ZIP archives of them
(read in memory, never extracted) and, for mnist and fashion_mnist, IDX image files as those
datasets ship them. Folders and archives are read in sorted order; their files that are not
images (by name) are skipped and counted. Every image goes the way the model's training
images went, with the settings the model folder records (preprocessing.json): decoded,
cropped and resized by the split stage's code (pipeline/datasets/images.py), then equalized,
padded and scaled by normalize's (pipeline/portable/preprocess.py, through pipeline/portable/inference.py).
An image is resized to the dataset's size (GTSRB's `image_size`, MNIST's 28x28) and given its
channels (RGB to luma for the digits); digits must be light on dark, as MNIST's are.

--labels: a GTSRB-format CSV (`Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId`, as
GT-final_test.csv), or a ZIP holding one (GTSRB_Final_Test_GT.zip). Rows are matched to images
by file name. A matched image is cropped to its row's ROI when the model was trained on ROI
crops (GTSRB's `crop_roi`), and its ClassId counts in the accuracy. Images without a row are
still classified (whole), rows without an image are skipped: each is counted in a warning.

Prints one row per image (file, class, name, confidence, and the label when known), then the
accuracy; with --json, the last line is one JSON object:
{"images": N, "accuracy": A, "labelled": K, "predictions": [{"file", "class", "name", "confidence", "label"}]}
(`accuracy`, `labelled` and `label` only with labels).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pipeline.config import Params
from pipeline.core import paths
from pipeline.core.errors import DataError, MissingInputError, UserError, clipped, one_line
from pipeline.core.progress import bar
from pipeline.datasets import get
from pipeline.datasets.archive import READ_ERRORS, ArchiveError, CorruptArchiveError, check_member
from pipeline.datasets.gtsrb import TEST_GT_CSV, TEST_GT_ZIP
from pipeline.datasets.gtsrb_reader import CsvRow, GtsrbFormatError, check_size, read_csv, rows_by_name
from pipeline.datasets.idx import is_idx, read_idx
from pipeline.datasets.images import IMAGE_SUFFIXES, crop_and_resize, decode, is_image
from pipeline.portable.inference import (
    MODEL_FILE,
    PREPROCESSING_FILE,
    Classifier,
)  # Keras loads with the first model only
from pipeline.portable.int8 import INT8_FILE, NOT_QUANTIZED_FILE, int8_folder

log = logging.getLogger(__name__)

TRACKED = False  # logs nothing: no MLflow worker
ARGUMENTS = (
    "dataset",
    "design",
    (
        "paths",
        {
            "nargs": "+",
            "metavar": "PATH",
            "help": "image files (PPM, PNG, JPEG), folders or ZIP archives of them, IDX files (digits)",
        },
    ),
    "--seed",
    (
        "--labels",
        {
            "metavar": "CSV",
            "help": "GTSRB-format ground truth (a CSV, or a ZIP holding one): ROIs to crop to, and the accuracy",
        },
    ),
    ("--json", {"action": "store_true", "help": "end with one line of JSON"}),
    ("--int8", {"action": "store_true", "help": "the int8 model evaluate made (LiteRT), not the float one"}),
)

IDX_DATASETS = ("mnist", "fashion_mnist")  # datasets shipped as IDX files, which PATH may then be
CHUNK = 1024  # images decoded, resized and classified at a time: memory stays flat on any input
PROGRESS_MIN_IMAGES = 2 * CHUNK
# Archives are read in memory, each member checked as extraction checks it (datasets/archive.py),
# its size before it is read and again while reading (a header may lie).
MAX_MEMBERS = 1_000_000
MAX_IMAGE_BYTES = 64 << 20
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class Entry:
    """One image of the input."""

    name: str  # as shown: its path, `archive.zip/member` or `images.idx[index]`
    file_name: str  # what a labels row calls it: the last part of its path
    load: Callable[[], np.ndarray]  # its decoded pixels, H x W x C uint8


@dataclass
class Inputs:
    entries: list[Entry]
    skipped: list[str]  # files in folders and archives that are not images, by name


CHAMPION = "champion"  # as DESIGN: the model the registry's alias names (pipeline/tracking/registry.py)
DESIGN_ALIASES = (CHAMPION,)  # cli.py leaves it to main


def main(args: argparse.Namespace, params: Params) -> None:
    seed = params.run_seed(args.seed)
    if args.design == CHAMPION:
        from pipeline.tracking import registry  # MLflow: only to read the registry

        if args.seed is not None:
            raise UserError(f"--seed {args.seed}: the champion is one trained model; drop --seed")
        args.design, seed = registry.champion(args.dataset)
        log.info("%s's champion: %s (seed %d)", args.dataset, args.design, seed)
    folder = paths.RunPaths(args.dataset, args.design, seed).model_dir
    with contextlib.ExitStack() as open_archives:
        inputs = collect(args.paths, args.dataset, open_archives)
        rows = None
        if args.labels:
            rows = match(inputs.entries, read_labels(Path(args.labels), get(args.dataset).num_classes), args.labels)
        check_trained(folder, args.dataset, args.design, seed, args.int8)
        classifier = Classifier(folder, args.int8)  # TensorFlow loads only now, once the input is known to be fine
        log.info("%s (seed %d) on %d image(s) from %s", args.design, seed, len(inputs.entries), ", ".join(args.paths))
        result = classify(classifier, inputs.entries, rows, args.labels)
    print_table(result, args.json)


def check_trained(folder: Path, dataset: str, design: str, seed: int, int8: bool = False) -> None:
    train = f"train it first: `python -m pipeline train {dataset} {design} --seed {seed}` (or `dvc repro`)"
    if not (folder / MODEL_FILE).is_file():
        raise MissingInputError(
            f"{folder / MODEL_FILE}: missing, {design} is not trained on {dataset} with seed {seed}; {train}"
        )
    if not (folder / PREPROCESSING_FILE).is_file():
        raise MissingInputError(
            f"{folder / PREPROCESSING_FILE}: missing, the model was trained by an older train stage; {train}"
        )
    quantized = int8_folder(folder)
    if int8 and (quantized / NOT_QUANTIZED_FILE).is_file():
        why = (quantized / NOT_QUANTIZED_FILE).read_text(encoding="utf-8").strip()
        raise UserError(f"{design} on {dataset} has no int8 model: {why}; predict without --int8")
    if int8 and not (quantized / INT8_FILE).is_file():
        raise MissingInputError(
            f"{quantized / INT8_FILE}: missing, evaluate makes it; run "
            f"`python -m pipeline evaluate {dataset} {design} --seed {seed}` (or `dvc repro`)"
        )


# --- What PATH names.


def collect(path_args: Sequence[str], dataset: str, stack: contextlib.ExitStack) -> Inputs:
    """The images of every PATH, in the order given; folders and archives in sorted order."""
    inputs = Inputs([], [])
    for text in path_args:
        path = Path(text)
        if path.is_dir():
            _folder(path, inputs)
        elif not path.is_file():
            raise MissingInputError(
                f"{path}: no such file or folder; expected image files (PPM, PNG, JPEG), "
                f"folders or ZIP archives of them"
            )
        else:
            with open(path, "rb") as handle:
                head = handle.read(16)
            if head.startswith(_ZIP_MAGIC):
                _archive(path, stack, inputs)
            elif is_idx(path, 3):
                inputs.entries.extend(_idx_images(path, dataset))
            elif is_image(head):
                inputs.entries.append(_file_entry(path, str(path)))
            else:
                idx = ", or IDX image files" if dataset in IDX_DATASETS else ""
                raise DataError(
                    f"{path}: not an image, ZIP or IDX file (it starts with {head[:8]!r}); expected PPM, "
                    f"PNG or JPEG images, folders or ZIP archives of them{idx}",
                    path,
                )
    if not inputs.entries:
        raise UserError(
            f"{', '.join(path_args)}: no images found ({len(inputs.skipped)} other file(s)); expected "
            f"PPM, PNG or JPEG files (named {', '.join(IMAGE_SUFFIXES)})"
        )
    if inputs.skipped:
        log.info(
            "skipped %d file(s) that are not images by their names, e.g. %s", len(inputs.skipped), inputs.skipped[0]
        )
    return inputs


def _file_entry(path: Path, name: str) -> Entry:
    name = one_line(name)  # a file's name may hold a line break: shown escaped in messages and the table

    def load() -> np.ndarray:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise DataError(f"{name}: {size:,} bytes; expected an image file of at most {MAX_IMAGE_BYTES:,}", path)
        return decode(path.read_bytes(), name)

    return Entry(name, path.name, load)


def _folder(folder: Path, inputs: Inputs) -> None:
    for path in sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix()):
        if path.name.lower().endswith(IMAGE_SUFFIXES) and not path.name.startswith("."):
            inputs.entries.append(_file_entry(path, str(path)))
        else:
            inputs.skipped.append(one_line(str(path)))


def _archive(path: Path, stack: contextlib.ExitStack, inputs: Inputs) -> None:
    """The images of a ZIP, read member by member when they are classified: never extracted."""
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
    except READ_ERRORS as error:
        raise CorruptArchiveError(f"{path}: corrupt or truncated zip archive ({clipped(str(error))})", path) from None
    # Not info.is_dir(): it raises IndexError on an entry with an empty name.
    members = sorted((info for info in archive.infolist() if not info.filename.endswith("/")), key=lambda i: i.filename)
    if len(members) > MAX_MEMBERS:
        raise ArchiveError(f"{path}: {len(members):,} members; expected at most {MAX_MEMBERS:,}", path)
    for info in members:
        name = PurePosixPath(info.filename.replace("\\", "/"))
        if (
            not name.name.lower().endswith(IMAGE_SUFFIXES) or name.name.startswith(".") or name.parts[0] == "__MACOSX"
        ):  # macOS's resource forks: ._x.png files that are no images
            inputs.skipped.append(one_line(f"{path}/{info.filename}"))
            continue
        check_member(path, info, MAX_IMAGE_BYTES)
        inputs.entries.append(Entry(f"{path}/{info.filename}", name.name, _member_loader(archive, info, path)))


def _member_loader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        name = f"{path}/{info.filename}"
        try:
            with archive.open(info) as member:
                data = member.read(MAX_IMAGE_BYTES + 1)  # to the end: zipfile then checks the CRC
        except READ_ERRORS as error:
            raise CorruptArchiveError(f"{name}: corrupt member ({clipped(str(error))})", path) from None
        if len(data) > MAX_IMAGE_BYTES:
            raise ArchiveError(f"{name}: more than the {info.file_size:,} bytes its header says; refusing it", path)
        return decode(data, name)

    return load


def _idx_images(path: Path, dataset: str) -> list[Entry]:
    if dataset not in IDX_DATASETS:
        raise DataError(
            f"{path}: an IDX file, which holds {' or '.join(IDX_DATASETS)} images; the {dataset} model "
            f"takes image files (PPM, PNG, JPEG), folders or ZIP archives of them",
            path,
        )
    images = read_idx(path, 3)[..., np.newaxis]
    return [
        Entry(f"{path}[{index}]", f"{path.name}[{index}]", lambda index=index: images[index])
        for index in range(len(images))
    ]


# --- --labels.


def read_labels(path: Path, num_classes: int) -> dict[str, CsvRow]:
    """The rows of a GTSRB-format ground-truth CSV, or of the one a ZIP holds, by file name."""
    if not path.is_file():
        raise MissingInputError(
            f"{path}: no such labels file; expected a GTSRB-format CSV ({TEST_GT_CSV}) or a ZIP holding one"
        )
    data = path.read_bytes()
    where = path
    if data.startswith(_ZIP_MAGIC):
        where, data = _csv_in_archive(path)
    by_name = rows_by_name(where, read_csv(where, data, suffixes=IMAGE_SUFFIXES, num_classes=num_classes))
    if not by_name:
        raise GtsrbFormatError(f"{where}: no data rows; expected one row per image", path, 1)
    return by_name


def _csv_in_archive(path: Path) -> tuple[Path, bytes]:
    try:
        with zipfile.ZipFile(path) as archive:
            csvs = [info for info in archive.infolist() if info.filename.lower().endswith(".csv")]
            official = [info for info in csvs if PurePosixPath(info.filename).name == TEST_GT_CSV]
            chosen = official or csvs
            if len(chosen) != 1:
                found = clipped(", ".join(info.filename for info in csvs)) or "none"
                raise ArchiveError(
                    f"{path}: holds {len(chosen)} CSV files ({found}); expected one ground-truth CSV, "
                    f"{TEST_GT_CSV} as in {TEST_GT_ZIP}",
                    path,
                )
            check_member(path, chosen[0], MAX_IMAGE_BYTES)
            return Path(path, chosen[0].filename), archive.read(chosen[0])
    except READ_ERRORS as error:
        raise CorruptArchiveError(f"{path}: corrupt or truncated zip archive ({clipped(str(error))})", path) from None


# --- Classifying.


@dataclass
class Result:
    names: list[str]
    classes: np.ndarray
    confidences: np.ndarray
    labels: list[int | None]
    class_names: list[str]
    labelled: bool


def classify(
    classifier: Classifier, entries: list[Entry], rows: list[CsvRow | None] | None, labels_file: str | None
) -> Result:
    """Every entry decoded, fitted to the model's images as split fits them, and classified, a chunk at a time.

    `rows`: each entry's labels row (None: it has none), or None without labels.
    """
    labelled = rows is not None
    rows = rows if rows is not None else [None] * len(entries)
    size, _, channels = classifier.image_shape  # square: every dataset's images are
    crop = bool(classifier.meta.get("options", {}).get("crop_roi", False))
    classes, confidences = [], []
    with bar(len(entries), "predict", "img", disable=len(entries) < PROGRESS_MIN_IMAGES) as progress:
        for start in range(0, len(entries), CHUNK):
            chunk = range(start, min(start + CHUNK, len(entries)))
            pixels = [_load(entries[i], rows[i], labels_file) for i in chunk]
            boxes = [rows[i].roi if crop and rows[i] is not None else None for i in chunk]
            probabilities = classifier.predict(crop_and_resize(pixels, boxes, size, channels))
            classes.append(probabilities.argmax(axis=1))
            confidences.append(probabilities.max(axis=1))
            progress.update(len(chunk))
    return Result(
        [entry.name for entry in entries],
        np.concatenate(classes),
        np.concatenate(confidences),
        [row.class_id if row is not None else None for row in rows],
        classifier.class_names,
        labelled,
    )


def _load(entry: Entry, row: CsvRow | None, labels_file: str | None) -> np.ndarray:
    pixels = entry.load()
    if row is not None:  # its ROI must be in the image the row describes
        check_size(pixels, row.width, row.height, f"{entry.name} ({labels_file} line {row.line})", labels_file)
    return pixels


def match(entries: list[Entry], labels: dict[str, CsvRow], labels_file: str) -> list[CsvRow | None]:
    """Each entry's row by file name; says how many images have no row and how many rows no image."""
    rows = [labels.get(entry.file_name) for entry in entries]
    matched = [entry for entry, row in zip(entries, rows) if row is not None]
    if not matched:
        raise UserError(
            f"{labels_file}: names none of the {len(entries)} image(s) (e.g. {entries[0].file_name}; "
            f"it lists e.g. {next(iter(labels))}); expected the ground truth of these images"
        )
    seen: dict[str, str] = {}
    for entry in matched:
        if entry.file_name in seen:
            raise UserError(
                f"{labels_file}: {entry.file_name} is the name of two images, {seen[entry.file_name]} and "
                f"{entry.name}, so its row cannot tell them apart; give one of them"
            )
        seen[entry.file_name] = entry.name
    unlabelled = [entry.name for entry, row in zip(entries, rows) if row is None]
    if unlabelled:
        log.warning(
            "%d of %d image(s) have no row in %s, e.g. %s: classified whole, without ROI, and left out of the accuracy",
            len(unlabelled),
            len(entries),
            labels_file,
            unlabelled[0],
        )
    unused = sorted(set(labels).difference(seen))
    if unused:
        log.warning(
            "%d of %d row(s) of %s name no image given, e.g. %s: the accuracy is over the %d image(s) that have a row",
            len(unused),
            len(labels),
            labels_file,
            unused[0],
            len(matched),
        )
    return rows


# --- Output.


def summary(result: Result) -> dict[str, Any]:
    """The JSON the --json line prints."""
    out: dict[str, Any] = {"images": len(result.names)}
    labelled = [i for i, label in enumerate(result.labels) if label is not None]
    if result.labelled:
        out["accuracy"] = float(np.mean([result.classes[i] == result.labels[i] for i in labelled]))
        out["labelled"] = len(labelled)
    out["predictions"] = [
        {
            "file": name,
            "class": int(k),
            "name": result.class_names[k],
            "confidence": float(f"{p:.6g}"),
            **({"label": label} if label is not None else {}),
        }
        for name, k, p, label in zip(result.names, result.classes, result.confidences, result.labels)
    ]
    return out


def table_lines(result: Result) -> Iterator[str]:
    width = max(len("file"), *(len(name) for name in result.names))
    names = max(len(name) for name in result.class_names)
    label = "  label" if result.labelled else ""
    yield f"{'file':<{width}}  class  {'name':<{names}}  confidence{label}"
    for name, k, p, truth in zip(result.names, result.classes, result.confidences, result.labels):
        mark = "" if not result.labelled else f"  {'' if truth is None else truth:>5}"
        yield f"{name:<{width}}  {int(k):>5}  {result.class_names[k]:<{names}}  {p:>10.4f}{mark}"


def print_table(result: Result, as_json: bool) -> None:
    for line in table_lines(result):
        print(line)
    data = summary(result)
    if result.labelled:
        right = round(data["accuracy"] * data["labelled"])
        print(f"accuracy {data['accuracy']:.4f} ({right} of {data['labelled']} labelled images)")
    else:
        print(f"{data['images']} images")
    if as_json:
        print(json.dumps(data))
