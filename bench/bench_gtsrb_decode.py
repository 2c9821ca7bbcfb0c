"""Benchmark: decoding GTSRB's training set with the pipeline's reader vs the usual ways.

Why: the split stage decodes all 39,209 training images (PPM, ROI crop, resize to 32x32)
every time GTSRB's raw data or its options change. Compared, on the same images:

- ``reader``: ``pipeline.datasets.gtsrb_reader.read_training_set`` as the split stage
  runs it (in one process: PPMs parsed with NumPy, the Pillow resize batched);
- ``naive``: the textbook single-process Pillow loop (read each class CSV; per image:
  ``Image.open``, ``crop(ROI)``, ``resize((32, 32), BILINEAR)``, ``np.asarray``), which
  computes exactly the same arrays (checked here);
- ``keras``: ``keras.utils.image_dataset_from_directory`` at 32x32 on PNG copies of the
  ROI crops (Keras reads no PPM), loaded whole into arrays. It resizes with TF's bilinear,
  so its pixels differ slightly; the mean absolute difference is reported.

The archive is extracted, the PNG copies written and every file read once (warm page
cache) before any timing. Each measured run is a fresh child process, methods alternate
(reader, naive, keras, reader, ...), and the child reports its own time (imports
excluded) and peak RSS (``ru_maxrss``). The median over the repeats is compared.

Usage (from the repository root; needs ../shared/datasets/gtsrb)::

    .venv/bin/python bench/bench_gtsrb_decode.py [--repeats 3] [--zip PATH]

Prints the JSON result on stdout and a one-line summary on stderr, and writes the JSON
to bench/results/gtsrb_decode.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_ZIP = ROOT.parent / "shared" / "datasets" / "gtsrb" / "GTSRB_Final_Training_Images.zip"
RESULT = ROOT / "bench" / "results" / "gtsrb_decode.json"
METHODS = ("reader", "naive", "keras")
SIZE = 32


# --------------------------------------------------------------------------- the three methods


def run_reader(root: Path) -> tuple[np.ndarray, np.ndarray]:
    from pipeline.datasets.gtsrb_reader import read_training_set

    split = read_training_set(root, size=SIZE, crop_roi=True, progress=False)
    return split.images, split.labels


def naive_rows(root: Path) -> list[tuple[Path, tuple[int, int, int, int], int]]:
    """(image path, ROI box, label) for every row of every class CSV, sorted by path like the reader."""
    images_dir = root / "GTSRB" / "Final_Training" / "Images"
    rows = []
    for class_dir in sorted(images_dir.iterdir()):
        with open(class_dir / f"GT-{class_dir.name}.csv", newline="") as handle:
            for row in csv.DictReader(handle, delimiter=";"):
                box = (int(row["Roi.X1"]), int(row["Roi.Y1"]), int(row["Roi.X2"]), int(row["Roi.Y2"]))
                rows.append((class_dir / row["Filename"], box, int(row["ClassId"])))
    rows.sort(key=lambda r: r[0])
    return rows


def run_naive(root: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    rows = naive_rows(root)
    images = np.empty((len(rows), SIZE, SIZE, 3), np.uint8)
    for index, (path, box, _) in enumerate(rows):
        with Image.open(path) as image:
            images[index] = np.asarray(image.crop(box).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    return images, np.array([label for _, _, label in rows])


def run_keras(png_root: Path) -> tuple[np.ndarray, np.ndarray]:
    import keras

    dataset = keras.utils.image_dataset_from_directory(
        png_root,
        labels="inferred",
        label_mode="int",
        image_size=(SIZE, SIZE),
        interpolation="bilinear",
        batch_size=512,
        shuffle=False,
        verbose=False,
    )
    batches = [(x.numpy(), y.numpy()) for x, y in dataset]
    images = np.concatenate([x for x, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    return np.clip(np.round(images), 0, 255).astype(np.uint8), labels


# --------------------------------------------------------------------------- child process


def child(method: str, data_dir: Path, out: Path) -> None:
    """Run one method once; print {"seconds", "peak_rss_mib", ...} as JSON."""
    # Import what the method needs before the clock starts: only the work is timed.
    if method == "keras":
        import keras  # noqa: F401  (TensorFlow start-up takes seconds)
    else:
        import PIL.Image  # noqa: F401

        import pipeline.datasets.gtsrb_reader  # noqa: F401
    start = time.perf_counter()
    if method == "reader":
        images, labels = run_reader(data_dir)
    elif method == "naive":
        images, labels = run_naive(data_dir)
    else:
        images, labels = run_keras(data_dir)
    seconds = time.perf_counter() - start
    np.save(out, images)
    report = {
        "seconds": seconds,
        "images": int(len(images)),
        "classes": int(len(np.unique(labels))),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(report))


def run_child(method: str, data_dir: Path, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", method, "--data", str(data_dir), "--out", str(out)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{method} run failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- preparation


def write_png_copies(root: Path, png_root: Path) -> None:
    """ROI crops as PNGs, one folder per class: what image_dataset_from_directory can read."""
    from PIL import Image

    for path, box, label in naive_rows(root):
        folder = png_root / f"{label:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image.crop(box).save(folder / (path.stem + ".png"), compress_level=1)


def warm_page_cache(*folders: Path) -> None:
    for folder in folders:
        for dirpath, _, filenames in os.walk(folder):
            for name in filenames:
                with open(os.path.join(dirpath, name), "rb") as handle:
                    handle.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", type=Path, default=DEFAULT_ZIP, help="GTSRB_Final_Training_Images.zip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.out)
        return 0
    if not args.zip.is_file():
        print(f"{args.zip}: not found; pass --zip", file=sys.stderr)
        return 2

    from PIL import __version__ as pillow_version

    from pipeline.datasets.archive import safe_extract_zip

    with tempfile.TemporaryDirectory(prefix="bench-gtsrb-") as tmp:
        tmp = Path(tmp)
        print("preparing: extracting, writing PNG copies, warming the page cache ...", file=sys.stderr)
        extracted = safe_extract_zip(args.zip, tmp / "extracted", progress=False)
        write_png_copies(extracted, tmp / "png")
        warm_page_cache(extracted, tmp / "png")
        data = {"reader": extracted, "naive": extracted, "keras": tmp / "png"}
        runs: dict[str, list[dict]] = {method: [] for method in METHODS}
        load_before = os.getloadavg()
        for repeat in range(args.repeats):
            for method in METHODS:
                report = run_child(method, data[method], tmp / f"{method}.npy")
                runs[method].append(report)
                print(f"  run {repeat + 1}/{args.repeats} {method:6s} {report['seconds']:7.2f} s", file=sys.stderr)
        load_after = os.getloadavg()
        arrays = {method: np.load(tmp / f"{method}.npy") for method in METHODS}

    identical = bool(np.array_equal(arrays["reader"], arrays["naive"]))
    keras_diff = float(np.abs(arrays["keras"].astype(np.int16) - arrays["naive"]).mean())
    seconds = {method: statistics.median(r["seconds"] for r in runs[method]) for method in METHODS}
    result = {
        "benchmark": "GTSRB training set: decode PPM + ROI crop + resize to 32x32 BILINEAR",
        "images": runs["reader"][0]["images"],
        "classes": runs["reader"][0]["classes"],
        "repeats": args.repeats,
        "seconds_median": seconds,
        "seconds_all": {method: [r["seconds"] for r in runs[method]] for method in METHODS},
        "speedup_vs_naive": seconds["naive"] / seconds["reader"],
        "speedup_vs_keras": seconds["keras"] / seconds["reader"],
        "peak_rss_mib": {method: max(r["peak_rss_mib"] for r in runs[method]) for method in METHODS},
        "reader_equals_naive_pillow": identical,
        "keras_mean_abs_diff_vs_naive": keras_diff,
        "cpus": len(os.sched_getaffinity(0)),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": pillow_version,
        "zip": str(args.zip),
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"GTSRB decode of {result['images']} images: reader {seconds['reader']:.2f} s, naive Pillow loop "
        f"{seconds['naive']:.2f} s ({result['speedup_vs_naive']:.1f}x), keras image_dataset_from_directory "
        f"{seconds['keras']:.2f} s ({result['speedup_vs_keras']:.1f}x); identical to Pillow: {identical}; "
        f"peak RSS reader {result['peak_rss_mib']['reader']:.0f} MiB, naive "
        f"{result['peak_rss_mib']['naive']:.0f} MiB, keras {result['peak_rss_mib']['keras']:.0f} MiB",
        file=sys.stderr,
    )
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
