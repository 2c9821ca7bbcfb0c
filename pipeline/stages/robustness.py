"""Stage `robustness@<dataset>-<design>-<seed>`: the trained model on the corruption benchmark.

Reads the benchmark corrupt wrote (data/corrupted/<dataset>), passes every corrupted image through the
model's own preprocessing (normalize's stats.json) and writes metrics/<dataset>/<design>/seed_<seed>/
robustness.json: the accuracy on the same test images clean, under each corruption at each severity, and
their mean (the mean corruption accuracy). Compare turns these into mCE against LeNet-5 classic
(docs/statistics.md). A stage of its own, so `experiments.robustness: false` skips it, and evaluate stays
as fast as it was. The numbers go into the run train opened, beside evaluate's.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from pipeline import tracking
from pipeline.config import Params
from pipeline.core import files, paths
from pipeline.core.errors import DataError
from pipeline.portable.preprocess import prepare
from pipeline.training import compute

ARGUMENTS = ("dataset", "design", "--seed")

log = logging.getLogger(__name__)


def accuracies(predict, x: np.ndarray, y: np.ndarray, names: list[str], stats: dict) -> dict[str, dict[str, float]]:
    """corruption -> severity ("1" to "5") -> accuracy, with `predict` mapping prepared images to classes."""
    out: dict[str, dict[str, float]] = {}
    for kind, sets in zip(names, x):
        levels, images = sets.shape[0], sets.shape[1]
        predicted = predict(prepare(sets.reshape(-1, *sets.shape[2:]), stats)).reshape(levels, images)
        out[kind] = {str(level + 1): float((predicted[level] == y).mean()) for level in range(levels)}
    return out


def summary(clean_accuracy: float, per_corruption: dict[str, dict[str, float]], images: int) -> dict:
    return {
        "images": images,
        "clean_accuracy": clean_accuracy,
        "corruption_accuracy": float(np.mean([a for levels in per_corruption.values() for a in levels.values()])),
        "accuracy": per_corruption,
    }


def main(args: argparse.Namespace, params: Params) -> None:
    started = time.perf_counter()
    seed = params.run_seed(args.seed)
    out = paths.RunPaths(args.dataset, args.design, seed)
    benchmark = paths.CORRUPTED / args.dataset
    meta = files.read_json(benchmark / "meta.json")
    if not params.experiment_robustness or meta["skipped"]:
        files.write_json(out.robustness, {"skipped": True})
        log.info("robustness of %s on %s: skipped (experiments.robustness is false)", args.design, args.dataset)
        return
    from pipeline.training.compile import load_model

    run = files.read_json(out.model_dir / "run.json")
    if "threads" in run:
        compute.use_threads(run["threads"])
    model = load_model(out.model_dir / "model.keras")
    stats = files.read_json(paths.NORMALIZED / args.dataset / "stats.json")
    arrays = files.map_arrays(benchmark / "images.npz")
    x_test, y_test = files.load_split(args.dataset, "test", mapped=True)  # the benchmark's images of it
    index = arrays["index"]
    if index.size and (index.max() >= len(y_test) or not np.array_equal(y_test[index], arrays["y"])):
        raise DataError(
            f"{benchmark}/images.npz: its images are not of this test split (labels differ); run `dvc repro` so "
            f"that corrupt@{args.dataset} makes it again from the current split",
            benchmark / "images.npz",
        )

    def predict(images: np.ndarray) -> np.ndarray:
        return model.predict(images, batch_size=params.evaluate.batch_size, verbose=0).argmax(axis=1)

    names = [entry["name"] for entry in meta["corruptions"]]
    clean = float((predict(x_test[index]) == arrays["y"]).mean())
    result = summary(clean, accuracies(predict, arrays["x"], arrays["y"], names, stats), len(index))
    result["seconds"] = time.perf_counter() - started  # the stage's work, its start-up aside
    files.write_json(out.robustness, result)
    log.info(
        "%s on %s (seed %d): accuracy %.4f clean, %.4f under corruption (mean of %d corruptions x %d severities, "
        "%d test images)",
        args.design,
        args.dataset,
        seed,
        clean,
        result["corruption_accuracy"],
        len(names),
        meta["severity_levels"],
        len(index),
    )
    with tracking.stage_run(params, args.dataset, "robustness", model=args.design, run_id=run["run_id"], seed=seed):
        tracking.log_metrics({"corruption_accuracy": result["corruption_accuracy"], "corruption_clean_accuracy": clean})
        # one metric per corruption (its mean over the severities): the 75 cells are in robustness.json
        tracking.log_metrics(
            {
                f"corruption_accuracy.{kind}": float(np.mean(list(levels.values())))
                for kind, levels in result["accuracy"].items()
            }
        )
        tracking.log_artifact(out.robustness, "reports")
