"""Stage `split@<dataset>`: decode the official files, then a seeded, stratified train/val split.

The official test set stays the test set. Validation is drawn from the official training
set, stratified by class; where images come in groups of near-duplicates (GTSRB's tracks)
whole groups go to one side, or validation accuracy would measure memory, not learning.
Outputs compact uint8 arrays (`np.load(..., allow_pickle=False)`) and per-class counts.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
from sklearn.model_selection import train_test_split

from pipeline import tracking
from pipeline.config import Params
from pipeline.core import files, paths
from pipeline.core.errors import DataError
from pipeline.datasets import RawData, get
from pipeline.datasets.manifest import damaged_file_advice

ARGUMENTS = ("dataset",)

log = logging.getLogger(__name__)


def split_indices(
    labels: np.ndarray, groups: np.ndarray | None, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices into the official training set, stratified and seeded."""
    if groups is not None:
        from pipeline.datasets.gtsrb_reader import track_split

        return track_split(labels, groups, val_fraction, seed)
    indices = np.arange(len(labels))
    train, val = train_test_split(indices, test_size=val_fraction, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(val)


def class_counts(labels: np.ndarray, class_names: tuple[str, ...]) -> dict[str, int]:
    """Images per class, by class name (readable in counts.json and in MLflow)."""
    return dict(zip(class_names, np.bincount(labels, minlength=len(class_names)).tolist()))


def split_dataset(raw: RawData, val_fraction: float, seed: int) -> dict[str, dict[str, np.ndarray]]:
    train_idx, val_idx = split_indices(raw.train_y, raw.train_groups, val_fraction, seed)
    groups = raw.train_groups if raw.train_groups is not None else np.arange(len(raw.train_y))
    return {
        "train": {"x": raw.train_x[train_idx], "y": raw.train_y[train_idx], "groups": groups[train_idx]},
        "val": {"x": raw.train_x[val_idx], "y": raw.train_y[val_idx], "groups": groups[val_idx]},
        "test": {"x": raw.test_x, "y": raw.test_y, "groups": np.full(len(raw.test_y), -1, dtype=np.int64)},
    }


def main(args: argparse.Namespace, params: Params) -> None:
    spec = get(args.dataset)
    settings = params.dataset(spec.key)

    log.info("decoding %s from data/raw/%s", spec.title, spec.key)
    try:
        raw = spec.read(paths.RAW / spec.key, settings.options)
    except DataError as error:  # the reader says what is wrong; what to do depends on where the file came from
        raise DataError(f"{error}; {damaged_file_advice(paths.RAW / spec.key, error.path)}", error.path) from None
    splits = split_dataset(raw, settings.val_fraction, params.seed)
    counts = {name: class_counts(split["y"], spec.class_names) for name, split in splits.items()}
    meta = {
        "dataset": spec.key,
        "class_names": list(spec.class_names),
        "image_shape": list(raw.train_x.shape[1:]),
        "options": settings.options,  # how the images were decoded (GTSRB: image_size, crop_roi), for predict
        "sizes": {name: int(len(split["y"])) for name, split in splits.items()},
        "val_fraction": settings.val_fraction,
        "seed": params.seed,
        "grouped_by": "track" if raw.train_groups is not None else None,
    }
    with files.atomic_directory(paths.SPLIT / spec.key) as out:
        for name, split in splits.items():
            files.save_arrays(out / f"{name}.npz", **split)
        files.write_json(out / "counts.json", counts)
        files.write_json(out / "meta.json", meta)
    log.info("split %s: %s", spec.key, ", ".join(f"{k} {v}" for k, v in meta["sizes"].items()))

    with tracking.stage_run(params, spec.key, "split"):
        tracking.log_params(
            {
                "val_fraction": settings.val_fraction,
                "options": settings.options,
                "image_shape": meta["image_shape"],
                "grouped_by": meta["grouped_by"],
            }
        )
        tracking.log_metrics({f"size_{name}": size for name, size in meta["sizes"].items()})
        tracking.log_metrics({f"class_min_{name}": min(c.values()) for name, c in counts.items()})
        tracking.log_metrics({f"class_max_{name}": max(c.values()) for name, c in counts.items()})
        tracking.log_artifact(paths.SPLIT / spec.key / "counts.json")
