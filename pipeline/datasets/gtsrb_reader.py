"""Decode the official GTSRB layout (after extraction) into uint8 arrays, fast and strictly.

Layout (Stallkamp et al. 2012, the official archives):

- training: ``<root>/GTSRB/Final_Training/Images/000NN/GT-000NN.csv`` plus the class's
  ``TTTTT_IIIII.ppm`` images (TTTTT is the track: consecutive frames of one physical sign);
- test: ``<root>/GTSRB/Final_Test/Images/NNNNN.ppm``, labelled by ``GT-final_test.csv``
  (it comes in a separate archive, so its path is an argument).

CSVs are ``;``-separated with CRLF line ends and the header
``Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId``. The ROI is read as a
half-open box, as in ``Image.crop((X1, Y1, X2, Y2))``: the crop is ``[Y1:Y2, X1:X2]``.
Why not inclusive: the readme promises a border of at least 5 pixels around the sign, and
the official rows have ``Width - X2 == 5`` and ``Height - Y2 == 5`` where the border is
smallest (e.g. ``00000.ppm;53;54;6;5;48;49``), which is 5 pixels only if X2/Y2 are
exclusive; this is also how the usual GTSRB code crops.

Speed: PPMs are parsed from their bytes with NumPy (no per-image PIL decoder), a chunk of
images is resized with a few Pillow calls that reproduce ``Image.resize(...,
BILINEAR)`` bit for bit (pipeline/datasets/images.py, which pipeline.stages.predict uses too), and
chunks are decoded one after another, in this process.

Bad input raises `GtsrbFormatError` naming the file, the CSV line and what was expected;
nothing is skipped silently. A dataset with a corrupt image, a wrong label or an ROI that
does not fit is a broken download or a broken copy, and training on a silently shrunken
or mislabelled set is worse than stopping.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, NoReturn

import numpy as np

from pipeline.core.errors import DataError, MissingInputError, shown
from pipeline.core.progress import bar
from pipeline.datasets.images import ImageFormatError, crop_and_resize, decode_ppm

NUM_CLASSES = 43
# groups = class * GROUP_STRIDE + track: unique across classes for any 5-digit track id.
GROUP_STRIDE = 100_000
CHUNK = 1024  # images per resize call
CSV_COLUMNS = ("Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")
MAX_DIGITS = 9  # a CSV number; the official ones have at most 5
MAX_NAME = 255  # characters of a Filename: the longest file name Linux, macOS and Windows allow

# The standard short names used in the GTSRB literature, in ClassId order.
CLASS_NAMES: tuple[str, ...] = (
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)
assert len(CLASS_NAMES) == NUM_CLASSES

# A data row: a file name, then seven non-negative ASCII integers, ';'-separated.
_CSV_ROW = re.compile(r"([^;]*)" + r";[ \t]*([0-9]+)[ \t]*" * 7)
_TRAIN_NAME = re.compile(r"(\d{5})_(\d{5})\.ppm")
_CLASS_DIR = re.compile(r"\d{5}")
_TRAIN_SUBDIR = Path("GTSRB", "Final_Training", "Images")
_TEST_SUBDIR = Path("GTSRB", "Final_Test", "Images")
_TEST_GT_NAME = "GT-final_test.csv"


class GtsrbFormatError(DataError):
    """The files do not follow the official GTSRB format.

    The message names the offending file, the CSV line (1-based, the header is line 1)
    that lists it, and what was expected. `path` and `line` carry the same information.
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None, line: int | None = None):
        super().__init__(message, path)
        self.line = line

    def __reduce__(self):  # keep path/line when raised in a worker process
        return (type(self), (self.args[0], self.path, self.line))


@dataclass
class GtsrbSplit:
    """One decoded split, rows in the order of `files`.

    images: uint8, N x size x size x 3 (x 1 when grayscale).
    labels: int64 ClassIds 0..42.
    groups: int64; training: class * GROUP_STRIDE + track (unique across classes);
        test: the row index (each test image is its own group).
    files: paths relative to the root that was read, POSIX style, sorted.
    """

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    files: list[str]

    def __len__(self) -> int:
        return len(self.labels)


class _Item(NamedTuple):
    """One image to decode, with what its CSV row says about it."""

    path: str
    width: int
    height: int
    roi: tuple[int, int, int, int]  # X1, Y1, X2, Y2 (X2, Y2 exclusive)
    origin: str  # "<csv> line N", for messages


class CsvRow(NamedTuple):
    """One data row of a ground-truth CSV; `line` is 1-based, the header being line 1."""

    line: int
    filename: str
    width: int
    height: int
    roi: tuple[int, int, int, int]
    class_id: int


# --------------------------------------------------------------------------- public API


def read_training_set(
    root: str | os.PathLike[str], size: int = 32, crop_roi: bool = True, grayscale: bool = False, progress: bool = True
) -> GtsrbSplit:
    """Read the official training set under `root` (the folder holding ``GTSRB/``).

    Every class folder present (``00000`` .. ``00042``) is read and validated; images are
    cropped to their ROI (unless `crop_roi` is false) and resized to `size` x `size`.
    Raises `GtsrbFormatError` on any deviation from the official format.
    """
    root = _existing_dir(root)
    images_dir = _find_dir(
        root,
        (_TRAIN_SUBDIR, Path("Final_Training", "Images")),
        _looks_like_train_dir,
        "the training images folder GTSRB/Final_Training/Images with class folders 000NN",
    )
    class_dirs: list[tuple[int, Path]] = []
    for entry in sorted(os.scandir(images_dir), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if not _CLASS_DIR.fullmatch(entry.name) or int(entry.name) >= NUM_CLASSES:
            raise GtsrbFormatError(
                f"{entry.path}: unexpected folder; expected class folders 00000 .. {NUM_CLASSES - 1:05d}", entry.path
            )
        class_dirs.append((int(entry.name), Path(entry.path)))
    if not class_dirs:
        raise GtsrbFormatError(f"{images_dir}: no class folders; expected 00000 .. {NUM_CLASSES - 1:05d}", images_dir)

    items: list[_Item] = []
    labels: list[int] = []
    groups: list[int] = []
    files: list[str] = []
    for class_id, folder in class_dirs:
        csv_path = folder / f"GT-{folder.name}.csv"
        listing = _ppm_listing(folder)
        if not csv_path.is_file():
            what = f"{len(listing)} images but no" if listing else "no images and no"
            raise GtsrbFormatError(
                f"{folder}: {what} {csv_path.name}; expected a non-empty class folder with its ground-truth CSV", folder
            )
        rows = read_csv(csv_path)
        if not rows:
            raise GtsrbFormatError(
                f"{csv_path}: no data rows (empty class folder); expected one row per image", csv_path, 1
            )
        _check_listing(folder, csv_path, rows, listing)
        # Plain string paths: a pathlib join per image adds up over tens of thousands of images.
        path_prefix, file_prefix = _prefixes(folder, root)
        csv_name = str(csv_path)
        for row in sorted(rows, key=lambda r: r.filename):  # class folders are sorted: all files end up sorted
            match = _TRAIN_NAME.fullmatch(row.filename)
            if match is None:
                raise GtsrbFormatError(
                    f"{csv_name} line {row.line}: Filename {row.filename!r}; expected "
                    f"TTTTT_IIIII.ppm (track_image, 5 digits each)",
                    csv_path,
                    row.line,
                )
            if row.class_id != class_id:
                raise GtsrbFormatError(
                    f"{csv_name} line {row.line}: {row.filename}: ClassId {row.class_id} "
                    f"disagrees with its folder {folder.name}; expected {class_id}",
                    csv_path,
                    row.line,
                )
            items.append(
                _Item(path_prefix + row.filename, row.width, row.height, row.roi, f"{csv_name} line {row.line}")
            )
            labels.append(class_id)
            groups.append(class_id * GROUP_STRIDE + int(match.group(1)))
            files.append(file_prefix + row.filename)

    images = _decode_all(items, size, crop_roi, grayscale, progress, "GTSRB train")
    return GtsrbSplit(images, np.asarray(labels, np.int64), np.asarray(groups, np.int64), files)


def read_test_set(
    root: str | os.PathLike[str],
    gt_csv: str | os.PathLike[str] | None = None,
    size: int = 32,
    crop_roi: bool = True,
    grayscale: bool = False,
    progress: bool = True,
) -> GtsrbSplit:
    """Read the official test images under `root`, labelled by `gt_csv`.

    `gt_csv` is ``GT-final_test.csv`` from ``GTSRB_Final_Test_GT.zip`` (with ClassId);
    when None it is looked for in `root`, ``root/GTSRB``, ``root/GTSRB/Final_Test`` and the
    images folder. Every row must name an existing image and every image must have a row.
    """
    root = _existing_dir(root)
    images_dir = _find_dir(
        root,
        (_TEST_SUBDIR, Path("Final_Test", "Images")),
        _looks_like_test_dir,
        "the test images folder GTSRB/Final_Test/Images with NNNNN.ppm images",
    )
    if gt_csv is None:
        candidates = [
            root / _TEST_GT_NAME,
            root / "GTSRB" / _TEST_GT_NAME,
            root / "GTSRB" / "Final_Test" / _TEST_GT_NAME,
            images_dir / _TEST_GT_NAME,
        ]
        gt_csv = next((c for c in candidates if c.is_file()), None)
        if gt_csv is None:
            raise GtsrbFormatError(
                f"{root}: no {_TEST_GT_NAME} found (looked in "
                f"{', '.join(str(c.parent) for c in candidates)}); expected the ground truth "
                f"from GTSRB_Final_Test_GT.zip, or pass its path as gt_csv",
                root,
            )
    gt_csv = Path(gt_csv)
    if not gt_csv.is_file():
        raise MissingInputError(f"{gt_csv}: no such ground-truth CSV")
    rows = read_csv(gt_csv)
    if not rows:
        raise GtsrbFormatError(f"{gt_csv}: no data rows; expected one row per test image", gt_csv, 1)
    _check_listing(images_dir, gt_csv, rows, _ppm_listing(images_dir))
    rows = sorted(rows, key=lambda r: r.filename)
    path_prefix, file_prefix = _prefixes(images_dir, root)
    items = [_Item(path_prefix + r.filename, r.width, r.height, r.roi, f"{gt_csv} line {r.line}") for r in rows]
    images = _decode_all(items, size, crop_roi, grayscale, progress, "GTSRB test")
    return GtsrbSplit(
        images,
        np.asarray([r.class_id for r in rows], np.int64),
        np.arange(len(rows), dtype=np.int64),
        [file_prefix + r.filename for r in rows],
    )


def track_split(
    labels: np.ndarray | Sequence[int], groups: np.ndarray | Sequence[int], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, val) by whole tracks, stratified by class, seeded.

    Per class, round(val_fraction * its number of tracks) tracks go to validation, at least
    one when the class has two tracks or more and never all of them (a class with a single
    track stays in train). Each class draws from its own generator seeded by (seed, class),
    so a class's choice does not depend on the other classes. Returns sorted int64 arrays.
    Raises ValueError if a group spans two classes.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if labels.ndim != 1 or labels.shape != groups.shape:
        raise ValueError(f"labels and groups must be 1-D and of equal length, got {labels.shape} and {groups.shape}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    pairs = np.unique(np.stack([groups, labels]), axis=1) if len(labels) else np.empty((2, 0), labels.dtype)
    mixed_groups, counts = np.unique(pairs[0], return_counts=True)
    if (counts > 1).any():
        group = mixed_groups[counts > 1][0]
        raise ValueError(
            f"group {group} spans classes {sorted(set(pairs[1][pairs[0] == group].tolist()))}; "
            f"expected every group (track) within one class"
        )
    val_groups: list[np.ndarray] = []
    for cls in np.unique(labels):
        tracks = pairs[0][pairs[1] == cls]  # sorted, unique
        n = len(tracks)
        n_val = math.floor(val_fraction * n + 0.5)
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        else:
            n_val = 0
        if n_val:
            rng = np.random.default_rng([int(seed), int(cls)])
            val_groups.append(rng.choice(tracks, size=n_val, replace=False))
    is_val = np.isin(groups, np.concatenate(val_groups)) if val_groups else np.zeros(len(labels), bool)
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


# --------------------------------------------------------------------------- layout and CSV


def _existing_dir(root: str | os.PathLike[str]) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"{root}: no such directory")
    return root


def _prefixes(folder: Path, root: Path) -> tuple[str, str]:
    """What to prepend to a file name in `folder`: for its path, and for its POSIX path under `root`."""
    relative = folder.relative_to(root).as_posix()
    return os.path.join(folder, ""), "" if relative == "." else relative + "/"


def _looks_like_train_dir(path: Path) -> bool:
    return any(e.is_dir() and _CLASS_DIR.fullmatch(e.name) for e in os.scandir(path))


def _looks_like_test_dir(path: Path) -> bool:
    return any(e.name.lower().endswith(".ppm") for e in os.scandir(path))


def _find_dir(root: Path, subdirs: Sequence[Path], fits, expected: str) -> Path:
    """`root/<subdir>` for the first subdir that exists, else root itself if it fits."""
    for sub in subdirs:
        if (root / sub).is_dir():
            return root / sub
    if fits(root):
        return root
    raise GtsrbFormatError(f"{root}: no {subdirs[0].as_posix()} folder; expected {expected}", root)


def _ppm_listing(folder: Path) -> set[str]:
    return {e.name for e in os.scandir(folder) if e.name.lower().endswith(".ppm") and e.is_file()}


def read_csv(
    csv_path: Path, data: bytes | None = None, suffixes: tuple[str, ...] = (".ppm",), num_classes: int = NUM_CLASSES
) -> list[CsvRow]:
    """Parse a ground-truth CSV (official header with ClassId), validating every field.

    `data`: the file's bytes when they do not come from `csv_path` (a member of an archive;
    `csv_path` then names it in messages). `suffixes`: the image file names it may list.
    """
    try:
        text = (csv_path.read_bytes() if data is None else data).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GtsrbFormatError(f"{csv_path}: not a text file ({exc}); expected ';'-separated ASCII", csv_path) from None
    lines = text.splitlines()
    expected_header = ";".join(CSV_COLUMNS)
    header = [f.strip() for f in lines[0].split(";")] if lines else []
    if tuple(header) != CSV_COLUMNS:
        hint = ""
        if tuple(header) == CSV_COLUMNS[:-1]:
            hint = (
                " (this CSV has no ClassId: for the test set use GT-final_test.csv from "
                "GTSRB_Final_Test_GT.zip, not GT-final_test.test.csv)"
            )
        got = shown(lines[0]) if lines else "an empty file"
        raise GtsrbFormatError(
            f"{csv_path} line 1: malformed header {got}{hint}; expected {expected_header!r}", csv_path, 1
        )
    rows: list[CsvRow] = []
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        match = _CSV_ROW.fullmatch(line)  # the common, well-formed row in one step
        if match is None:
            _explain_bad_row(csv_path, line_no, line)
        filename = match.group(1).strip()
        numbers = match.group(2, 3, 4, 5, 6, 7, 8)
        for column, digits in zip(CSV_COLUMNS[1:], numbers):
            if len(digits) > MAX_DIGITS:  # int() refuses more than 4,300 digits, and no image is that large
                raise GtsrbFormatError(
                    f"{csv_path} line {line_no}: {column} of {len(digits):,} digits; expected a non-negative "
                    f"integer of at most {MAX_DIGITS} digits",
                    csv_path,
                    line_no,
                )
        width, height, x1, y1, x2, y2, class_id = map(int, numbers)
        if len(filename) > MAX_NAME:
            raise GtsrbFormatError(
                f"{csv_path} line {line_no}: Filename of {len(filename):,} characters; expected a file name of "
                f"at most {MAX_NAME}",
                csv_path,
                line_no,
            )
        if not filename.lower().endswith(suffixes) or filename.startswith(".") or "/" in filename or "\\" in filename:
            expected = f"NAME{suffixes[0]}" if len(suffixes) == 1 else f"file name ending in {', '.join(suffixes)}"
            raise GtsrbFormatError(
                f"{csv_path} line {line_no}: Filename {filename!r}; expected a plain {expected}", csv_path, line_no
            )
        if width < 1 or height < 1:
            raise GtsrbFormatError(
                f"{csv_path} line {line_no}: {filename}: size {width}x{height}; expected Width, Height >= 1",
                csv_path,
                line_no,
            )
        if not (x1 < x2 <= width and y1 < y2 <= height):
            raise GtsrbFormatError(
                f"{csv_path} line {line_no}: {filename}: ROI (X1, Y1, X2, Y2) = ({x1}, {y1}, {x2}, "
                f"{y2}) is empty or outside the {width}x{height} image; expected "
                f"0 <= X1 < X2 <= Width and 0 <= Y1 < Y2 <= Height",
                csv_path,
                line_no,
            )
        if class_id >= num_classes:
            raise GtsrbFormatError(
                f"{csv_path} line {line_no}: {filename}: ClassId {class_id}; expected 0 .. {num_classes - 1}",
                csv_path,
                line_no,
            )
        rows.append(CsvRow(line_no, filename, width, height, (x1, y1, x2, y2), class_id))
    return rows


def _explain_bad_row(csv_path: Path, line_no: int, line: str) -> NoReturn:
    """Raise the error that says what is wrong with a row `_CSV_ROW` does not match."""
    where = f"{csv_path} line {line_no}"
    fields = [f.strip() for f in line.split(";")]
    if len(fields) != len(CSV_COLUMNS):
        raise GtsrbFormatError(
            f"{where}: {len(fields)} fields in {shown(line)}; expected {len(CSV_COLUMNS)} ({';'.join(CSV_COLUMNS)})",
            csv_path,
            line_no,
        )
    for column, field in zip(CSV_COLUMNS[1:], fields[1:]):
        if not (field.isascii() and field.isdigit()):
            raise GtsrbFormatError(
                f"{where}: {shown(fields[0])}: {column} {shown(field)}; expected a non-negative integer",
                csv_path,
                line_no,
            )
    raise GtsrbFormatError(f"{where}: malformed row {shown(line)}; expected {';'.join(CSV_COLUMNS)}", csv_path, line_no)


def rows_by_name(csv_path: Path, rows: list[CsvRow]) -> dict[str, CsvRow]:
    """The rows of a CSV by file name, refusing a name listed twice."""
    by_name: dict[str, CsvRow] = {}
    for row in rows:
        if row.filename in by_name:
            raise GtsrbFormatError(
                f"{csv_path} line {row.line}: {row.filename} is listed again (first at line "
                f"{by_name[row.filename].line}); expected one row per image",
                csv_path,
                row.line,
            )
        by_name[row.filename] = row
    return by_name


def _check_listing(folder: Path, csv_path: Path, rows: list[CsvRow], listing: set[str]) -> None:
    """Every row names an existing, distinct image and every image of the folder has a row."""
    listed = rows_by_name(csv_path, rows)
    for row in rows:
        if row.filename not in listing:
            raise GtsrbFormatError(
                f"{csv_path} line {row.line}: {row.filename} does not exist in {folder}; "
                f"expected every listed image to be present",
                csv_path,
                row.line,
            )
    unlisted = sorted(listing.difference(listed))
    if unlisted:
        raise GtsrbFormatError(
            f"{folder / unlisted[0]}: not listed in {csv_path} ({len(unlisted)} unlisted "
            f"image(s)); expected one CSV row per image",
            folder / unlisted[0],
        )


# --------------------------------------------------------------------------- decoding


def _decode_all(
    items: list[_Item], size: int, crop_roi: bool, grayscale: bool, progress: bool, desc: str
) -> np.ndarray:
    """Decode `items` into an N x size x size x C array, in order."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    n = len(items)
    out = np.empty((n, size, size, 1 if grayscale else 3), np.uint8)
    # Chunks of up to 1024 images: each Pillow call then resizes many crops at once.
    with bar(n, desc, "img", disable=not progress) as pbar:
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            out[start:stop] = _decode_chunk(items[start:stop], size, crop_roi, grayscale)
            pbar.update(stop - start)
    return out


def _decode_chunk(items: Sequence[_Item], size: int, crop_roi: bool, grayscale: bool) -> np.ndarray:
    """Decode, crop and resize a list of images into an n x size x size x C uint8 array."""
    pixels = [_decode_item(item) for item in items]
    return crop_and_resize(pixels, [item.roi if crop_roi else None for item in items], size, 1 if grayscale else 3)


def _decode_item(item: _Item) -> np.ndarray:
    """One image's pixels, checked against its CSV row."""
    where = f"{item.path} ({item.origin})"
    try:
        with open(item.path, "rb") as handle:
            pixels = decode_ppm(handle.read(), where)
    except ImageFormatError as error:
        raise GtsrbFormatError(str(error), item.path) from None
    check_size(pixels, item.width, item.height, where, item.path)
    return pixels


def check_size(pixels: np.ndarray, width: int, height: int, where: str, path: str | os.PathLike[str]) -> None:
    """Refuse an image whose size is not the Width and Height of its CSV row: its ROI would be meaningless."""
    if pixels.shape[1::-1] != (width, height):
        raise GtsrbFormatError(
            f"{where}: image is {pixels.shape[1]}x{pixels.shape[0]}; expected {width}x{height} as its CSV row says",
            path,
        )
