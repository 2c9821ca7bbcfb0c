"""Stage `train@<dataset>-<design>-<seed>`: build a design from params, fit it, save it and its history.

Outputs (pipeline/paths.py): models/<dataset>/<design>/seed_<seed>/ (model.keras, summary.txt,
run.json with the MLflow run id that evaluate continues), plots/history/<dataset>/<design>/seed_<seed>.csv
(per-epoch loss and accuracy, train and validation) and metrics/<dataset>/<design>/seed_<seed>/train.json.
The training seed sets the initial weights and the batch order; the data split has its own (`seed`).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

from pipeline import exit_now, files, paths, tracking

if __name__ == "__main__":  # run as the stage: MLflow loads in its worker while TensorFlow loads here
    tracking.warm_up()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline.architecture import architecture_report, format_report  # noqa: E402
from pipeline.config import Params, load_params  # noqa: E402
from pipeline.models import build_model, compile_model  # noqa: E402
from pipeline.progress import is_tty, setup_logging  # noqa: E402

log = logging.getLogger("pipeline.train")


def load_split(dataset: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = files.load_arrays(paths.NORMALIZED / dataset / f"{name}.npz")
    return arrays["x"], arrays["y"]


# Validation is a forward pass whose result does not depend on the batch size; big batches
# halve its cost per epoch (1.7 s -> 1.0 s for MNIST's 6,000 images here).
VALIDATION_BATCH_SIZE = 1024


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None = None) -> tf.data.Dataset:
    """Batches of (x, y), reshuffled every epoch when `seed` is given.

    Shuffles indices and gathers one batch at a time: no copy of the data in a shuffle
    buffer, and no per-image work in Python. tf.data's autotuner is off: on 2 cores it
    sometimes left training on one core for a whole run (a third of runs at exactly half
    speed, bench/RESULTS.md); a fixed two-batch prefetch keeps both cores on the model.
    """
    x_all, y_all = tf.constant(x), tf.constant(y)
    order = tf.data.Dataset.range(len(y))
    if seed is not None:
        order = order.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.autotune.enabled = False
    return (order.batch(batch_size).map(lambda index: (tf.gather(x_all, index), tf.gather(y_all, index)))
            .prefetch(2).with_options(options))


class EpochLog(keras.callbacks.Callback):
    """One readable line per epoch (CI logs are not TTYs), and the epoch's metrics to MLflow."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = {k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}
        self.seconds.append(time.perf_counter() - self.started)
        log.info("epoch %d/%d %.1fs  %s", epoch + 1, self.epochs, self.seconds[-1],
                 "  ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items())))
        tracking.log_metrics({**logs, "epoch_seconds": self.seconds[-1]}, step=epoch + 1)


def train(params: Params, dataset: str, design_name: str, seed: int) -> dict[str, Any]:
    design = params.design(design_name)
    settings = params.train_settings(design_name)
    meta = files.read_json(paths.NORMALIZED / dataset / "meta.json")
    x_train, y_train = load_split(dataset, "train")
    x_val, y_val = load_split(dataset, "val")

    tf.config.experimental.enable_op_determinism()  # same params + seed -> same weights and metrics
    model = compile_model(build_model(design, tuple(meta["input_shape"]), len(meta["class_names"]), seed),
                          design, settings)
    summary = io.StringIO()
    model.summary(print_fn=lambda line, **_: summary.write(line + "\n"))
    architecture = architecture_report(model, settings.batch_size)
    log.info("%s on %s: %d parameters, %d train / %d val images, %s", design_name, dataset, model.count_params(),
             len(y_train), len(y_val), settings)

    epoch_log = EpochLog(settings.epochs)
    callbacks = [epoch_log]
    if settings.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=settings.early_stopping_patience,
                                                       restore_best_weights=True))
    started = time.perf_counter()
    history = model.fit(batches(x_train, y_train, settings.batch_size, seed), epochs=settings.epochs,
                        validation_data=batches(x_val, y_val, VALIDATION_BATCH_SIZE), callbacks=callbacks,
                        shuffle=False,  # batches() reshuffles, seeded; Keras cannot shuffle a dataset
                        verbose=1 if is_tty() else 0)
    train_seconds = time.perf_counter() - started
    rows = [{"epoch": epoch + 1, **{k: float(v[epoch]) for k, v in history.history.items() if k != "learning_rate"},
             "seconds": epoch_log.seconds[epoch]} for epoch in range(len(history.epoch))]
    return {"model": model, "summary": summary.getvalue(), "architecture": architecture, "history": rows,
            "settings": settings, "meta": meta, "metrics": {
                "train_seconds": train_seconds,
                "epochs_run": len(rows),
                "params": int(model.count_params()),
                "macs_per_image": architecture["totals"]["macs"],
                "best_val_accuracy": max(r["val_accuracy"] for r in rows),
                "final_val_accuracy": rows[-1]["val_accuracy"],
                "final_train_accuracy": rows[-1]["accuracy"],
                "images_per_second": len(y_train) * len(rows) / sum(epoch_log.seconds),
            }}


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    with files.atomic_file(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("design")
    parser.add_argument("--seed", type=int, help="training seed (default: the first of experiments.seeds)")
    args = parser.parse_args(argv)
    setup_logging()
    params = load_params()
    params.dataset(args.dataset)
    design = params.design(args.design)
    seed = params.run_seed(args.seed)
    out = paths.RunPaths(args.dataset, args.design, seed)

    with tracking.stage_run(params, args.dataset, "train", model=args.design, seed=seed) as run:
        tracking.log_params({"dataset": args.dataset, "design": args.design, "split_seed": params.seed,
                             "train": params.train_settings(args.design).__dict__,
                             "design_spec": params.raw["models"][args.design],
                             "normalize": params.raw["normalize"], "builtin": design.builtin or "none"})
        result = train(params, args.dataset, args.design, seed)
        model = result["model"]
        with files.atomic_directory(out.model_dir) as tmp:
            model.save(tmp / "model.keras")
            (tmp / "summary.txt").write_text(result["summary"], encoding="utf-8")
            (tmp / "architecture.md").write_text(format_report(result["architecture"]), encoding="utf-8")
            files.write_json(tmp / "run.json", {"run_id": run.id, "dataset": args.dataset, "design": args.design,
                                                "seed": seed, "input_shape": result["meta"]["input_shape"]})
        write_history(out.history, result["history"])
        files.write_json(out.metrics_dir / "train.json", result["metrics"])
        tracking.log_metrics({k: v for k, v in result["metrics"].items()})
        tracking.log_metrics({f"arch_{key}": value for key, value in result["architecture"]["totals"].items()})
        tracking.log_artifact(out.model_dir / "summary.txt", "reports")
        tracking.log_artifact(out.model_dir / "architecture.md", "reports")
        tracking.log_text(out.history.read_text(encoding="utf-8"), "reports/history.csv")
    log.info("trained %s on %s (seed %d) in %.1fs: best val accuracy %.4f", args.design, args.dataset, seed,
             result["metrics"]["train_seconds"], result["metrics"]["best_val_accuracy"])
    return 0


if __name__ == "__main__":
    exit_now(main())
