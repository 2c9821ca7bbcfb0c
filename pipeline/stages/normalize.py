"""Stage `normalize@<dataset>`: contrast normalization, pixel scaling, grayscale, padding.

What each step does lives in pipeline/portable/preprocess.py, which pipeline.stages.predict uses too. Modes
(`normalize.mode`), each a per-channel affine map x -> x * scale + offset:
  unit         x / 255, as the course notebooks do;
  lecun        background (0) -> -0.1 and foreground (255) -> 1.175, as in LeCun et al.
               1998, which makes the mean roughly 0 and the variance roughly 1 on MNIST;
  standardize  (x - mean) / std per channel, fitted on the training split only (fitting
               on val or test would leak them into training) and saved in stats.json.
`normalize.equalize` (none, histogram, clahe) equalizes each image's luminance first;
`normalize.per_dataset.<dataset>` overrides any of these keys for one dataset. Padding adds
background (raw 0) around the image, so a 28x28 digit sits centred in a 32x32 field as in
the paper; images already that large are left as they are.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from pipeline import tracking
from pipeline.config import NormalizeParams, Params
from pipeline.core import files, paths
from pipeline.portable.preprocess import apply_affine, fit_affine, shape_and_equalize

ARGUMENTS = ("dataset",)

log = logging.getLogger(__name__)


def normalize_splits(splits: dict[str, dict[str, np.ndarray]], settings: NormalizeParams) -> tuple[dict, dict, float]:
    """Normalize every split with statistics from the training split.

    Returns (splits, stats, seconds spent equalizing and reshaping). The time stays out of
    stats.json: a stage output must be the same bytes for the same inputs, or DVC would
    retrain every design downstream of an unchanged dataset."""
    started = time.perf_counter()
    prepared = {
        name: shape_and_equalize(s["x"], settings.equalize, settings.grayscale, settings.pad_to)
        for name, s in splits.items()
    }
    equalize_seconds = time.perf_counter() - started
    scale, offset = fit_affine(prepared["train"], settings.mode)
    out = {name: {"x": apply_affine(x, scale, offset), "y": splits[name]["y"]} for name, x in prepared.items()}
    stats = {
        "mode": settings.mode,
        "scale": scale.tolist(),
        "offset": offset.tolist(),
        "pad_to": settings.pad_to,
        "grayscale": settings.grayscale,
        "equalize": settings.equalize,
        "input_shape": list(prepared["train"].shape[1:]),
        "fitted_on": "train",
    }
    return out, stats, equalize_seconds


def main(args: argparse.Namespace, params: Params) -> None:
    source = paths.SPLIT / args.dataset
    splits = {name: files.load_arrays(source / f"{name}.npz") for name in paths.SPLITS}
    meta = files.read_json(source / "meta.json")
    normalized, stats, seconds = normalize_splits(splits, params.normalize_for(args.dataset))
    with files.atomic_directory(paths.NORMALIZED / args.dataset) as out:
        for name, split in normalized.items():
            files.save_arrays(out / f"{name}.npz", **split)
        files.write_json(out / "stats.json", stats)
        files.write_json(out / "meta.json", {**meta, "input_shape": stats["input_shape"]})
    log.info(
        "normalized %s: mode %s, equalize %s (%.1fs), input shape %s",
        args.dataset,
        stats["mode"],
        stats["equalize"],
        seconds,
        stats["input_shape"],
    )
    with tracking.stage_run(params, args.dataset, "normalize"):
        tracking.log_params(
            {
                "mode": stats["mode"],
                "pad_to": stats["pad_to"],
                "grayscale": stats["grayscale"],
                "equalize": stats["equalize"],
                "input_shape": stats["input_shape"],
                "scale": stats["scale"],
                "offset": stats["offset"],
            }
        )
        tracking.log_metrics({"preprocess_seconds": seconds})
