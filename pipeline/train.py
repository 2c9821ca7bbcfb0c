"""Stage `train@<dataset>-<design>-<seed>`: build a design from params, fit it, save it and its history.

Outputs (pipeline/paths.py): models/<dataset>/<design>/seed_<seed>/ (model.keras, summary.txt,
run.json with the MLflow run id that evaluate continues, preprocessing.json with what predicting needs), plots/history/<dataset>/<design>/seed_<seed>.csv
(per-epoch loss and accuracy, train and validation) and metrics/<dataset>/<design>/seed_<seed>/train.json.
The training seed sets the initial weights and the batch order; the data split has its own (`seed`).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline import compute, files, gpu_present, paths, stage, tracking

if __name__ == "__main__":  # params are checked and MLflow loads in its worker before TensorFlow loads
    stage.enter(__spec__.name, __doc__, "dataset", "design", "--seed")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline.architecture import architecture_report, format_report  # noqa: E402
from pipeline.augment import augment_batch  # noqa: E402
from pipeline.checkpoints import Checkpoint, fingerprint  # noqa: E402
from pipeline.config import Params  # noqa: E402
from pipeline.designs import TrainSettings  # noqa: E402
from pipeline.models import build_model, compile_model, load_model  # noqa: E402
from pipeline.schedules import rate_at  # noqa: E402
from pipeline.progress import is_tty  # noqa: E402

log = logging.getLogger("pipeline.train")


def load_split(dataset: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = files.load_arrays(paths.NORMALIZED / dataset / f"{name}.npz")
    return arrays["x"], arrays["y"]


# Validation is a forward pass whose result does not depend on the batch size; big batches
# halve its cost per epoch (1.7 s -> 1.0 s for MNIST's 6,000 images here).
VALIDATION_BATCH_SIZE = 1024


def _fixed_pipeline(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """tf.data's autotuner off: on 2 cores it sometimes left training on one core for a whole
    run (a third of runs at exactly half speed, bench/RESULTS.md); a fixed two-batch prefetch
    keeps both cores on the model. A CPU choice: feeding a GPU is what the autotuner is for."""
    if gpu_present():
        return dataset.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(2).with_options(options)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Batches of (x, y) in order: validation and evaluation."""
    return _fixed_pipeline(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size))


def training_batches(x: np.ndarray, y: np.ndarray, settings: TrainSettings, seed: int, first_epoch: int,
                     pixel_scale: np.ndarray) -> tf.data.Dataset:
    """The training batches of epochs first_epoch..settings.epochs-1, one epoch after another.

    Epoch e's order and jitter are stateless functions of (seed, e) (and the batch's index),
    never of how many epochs this process has run, so a run resumed at epoch e sees exactly
    the batches an uninterrupted one does. Indices are shuffled and gathered one batch at a
    time: no copy of the data in a shuffle buffer, no per-image work in Python. Augmentation
    (pipeline/augment.py) touches these batches only, never validation or test.
    """
    x_all, y_all = tf.constant(x), tf.constant(y)
    count, steps = len(y), steps_per_epoch(len(y), settings.batch_size)

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed=tf.stack([seed, epoch]))
        indices = tf.data.Dataset.from_tensor_slices(order).batch(settings.batch_size).enumerate()

        def gather(batch: tf.Tensor, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            images = tf.gather(x_all, index)
            if settings.augment.enabled:  # a key of its own: -(global batch number) - 1, never a shuffle's epoch
                images = augment_batch(images, tf.stack([seed, -(epoch * steps + batch) - 1]), settings.augment,
                                       pixel_scale)
            return images, tf.gather(y_all, index)

        return indices.map(gather)

    return _fixed_pipeline(tf.data.Dataset.range(first_epoch, settings.epochs).flat_map(epoch_batches))


def steps_per_epoch(images: int, batch_size: int) -> int:
    return -(-images // batch_size)


class EpochLog(keras.callbacks.Callback):
    """Per epoch: one readable line (CI logs are not TTYs), a history row, the metrics to MLflow,
    the best epoch so far (restore_best and early stopping), and a checkpoint to resume from."""

    def __init__(self, settings: TrainSettings, steps: int, checkpoint: Checkpoint, state: dict[str, Any]) -> None:
        super().__init__()
        self.settings, self.steps, self.checkpoint = settings, steps, checkpoint
        self.rows: list[dict[str, float]] = state.get("history", [])
        self.best_epoch: int = state.get("best_epoch", 0)
        self.best_val_accuracy: float = state.get("best_val_accuracy", -1.0)
        self.best_weights: list[np.ndarray] | None = state.get("best_weights")
        self.run_id = state.get("run_id")
        self.earlier_seconds: float = state.get("train_seconds", 0.0)  # before an interruption

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.fit_started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self.started
        metrics = {k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}
        rate = rate_at(epoch * self.steps, self.settings, self.steps)  # the rate the epoch started with
        self.rows.append({"epoch": epoch + 1, **metrics, "learning_rate": rate, "seconds": seconds})
        if metrics["val_accuracy"] > self.best_val_accuracy:  # ties keep the earlier epoch
            self.best_epoch, self.best_val_accuracy = epoch + 1, metrics["val_accuracy"]
            if self.settings.restore_best:
                self.best_weights = [np.array(w) for w in self.model.get_weights()]
        patience = self.settings.early_stopping_patience
        if patience and epoch + 1 - self.best_epoch >= patience:
            log.info("early stop: no better validation accuracy for %d epochs since epoch %d", patience,
                     self.best_epoch)
            self.model.stop_training = True
        if epoch + 1 < self.settings.epochs and not self.model.stop_training:
            self.checkpoint.save(self.model, self.state(), self.best_weights)
        # logged once the checkpoint is saved: after "epoch e/N", an interruption resumes at e + 1
        log.info("epoch %d/%d %.1fs  %s  lr %.3g", epoch + 1, self.settings.epochs, seconds,
                 "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())), rate)
        tracking.log_metrics({**metrics, "learning_rate": rate, "epoch_seconds": seconds}, step=epoch + 1)

    def state(self) -> dict[str, Any]:
        return {"epochs_done": len(self.rows), "history": self.rows, "best_epoch": self.best_epoch,
                "best_val_accuracy": self.best_val_accuracy, "run_id": self.run_id,
                "train_seconds": self.train_seconds()}

    def train_seconds(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self.fit_started


def run_settings(params: Params, design_name: str, dataset: str) -> TrainSettings:
    """The design's recipe on `dataset` as this run uses it: `threads: auto` resolved to the count
    it trains on, which is what train.json, MLflow and the checkpoint record."""
    settings = params.train_settings(design_name, dataset)
    return replace(settings, threads=compute.resolve_threads(settings.threads))


def run_fingerprint(params: Params, dataset: str, design_name: str, seed: int, settings: TrainSettings) -> str:
    """What determines a training run, for its checkpoint: a checkpoint of other params is never resumed."""
    data = paths.NORMALIZED / dataset
    meta = files.read_json(data / "meta.json")  # first: a missing input is the user's error, said so
    return fingerprint({"dataset": dataset, "meta": meta, "design": params.raw["models"][design_name], "seed": seed,
                        "train": settings.as_params(), "tensorflow": tf.__version__,
                        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS")},
                       [data / "train.npz", data / "val.npz", data / "stats.json"])


def train(params: Params, dataset: str, design_name: str, seed: int, checkpoint: Checkpoint,
          state: dict[str, Any] | None = None, run_id: str | None = None,
          settings: TrainSettings | None = None) -> dict[str, Any]:
    """Fit a design on a dataset, from scratch or, given a checkpoint's `state`, from where it stopped.

    `settings`: the run's recipe (run_settings), resolved once by the caller that also records it.
    """
    design = params.design(design_name)
    settings = settings or run_settings(params, design_name, dataset)
    compute.use_threads(settings.threads)  # before the first op: TensorFlow fixes its pools then
    compute.warn_if_emulated(settings.precision)
    meta = files.read_json(paths.NORMALIZED / dataset / "meta.json")
    stats = files.read_json(paths.NORMALIZED / dataset / "stats.json")
    x_train, y_train = load_split(dataset, "train")
    x_val, y_val = load_split(dataset, "val")
    steps = steps_per_epoch(len(y_train), settings.batch_size)
    state = state or {}

    tf.config.experimental.enable_op_determinism()  # same params + seed -> same weights and metrics
    if state:
        model = load_model(checkpoint.model_file)  # weights, optimizer state and step count
        checkpoint.restore_random_states(model, state)
        log.info("resuming %s on %s after epoch %d of %d (checkpoint %s)", design_name, dataset,
                 state["epochs_done"], settings.epochs, checkpoint.folder)
    else:
        model = compile_model(build_model(design, tuple(meta["input_shape"]), len(meta["class_names"]), seed,
                                          settings.precision), design, settings, steps)
    summary = io.StringIO()
    model.summary(print_fn=lambda line, **_: summary.write(line + "\n"))
    architecture = architecture_report(model, settings.batch_size)
    log.info("%s on %s: %d parameters, %d train / %d val images, %s", design_name, dataset, model.count_params(),
             len(y_train), len(y_val), settings)

    epoch_log = EpochLog(settings, steps, checkpoint, {**state, "run_id": run_id})
    first_epoch = state.get("epochs_done", 0)
    model.fit(training_batches(x_train, y_train, settings, seed, first_epoch, np.asarray(stats["scale"])),
              epochs=settings.epochs, initial_epoch=first_epoch, steps_per_epoch=steps,
              validation_data=batches(x_val, y_val, VALIDATION_BATCH_SIZE), callbacks=[epoch_log],
              shuffle=False,  # training_batches() shuffles, seeded; Keras cannot shuffle a dataset
              verbose=1 if is_tty() else 0)
    train_seconds = epoch_log.train_seconds()
    rows = epoch_log.rows
    if settings.restore_best and epoch_log.best_epoch != rows[-1]["epoch"]:
        model.set_weights(epoch_log.best_weights)
        log.info("restored the weights of epoch %d (best validation accuracy %.4f)", epoch_log.best_epoch,
                 epoch_log.best_val_accuracy)
    kept = epoch_log.best_epoch if settings.restore_best else rows[-1]["epoch"]
    return {"model": model, "summary": summary.getvalue(), "architecture": architecture, "history": rows,
            "settings": settings, "meta": meta, "metrics": {
                "train_seconds": train_seconds,
                "epochs_run": len(rows),
                "params": int(model.count_params()),
                "macs_per_image": architecture["totals"]["macs"],
                "best_epoch": epoch_log.best_epoch,
                "best_val_accuracy": epoch_log.best_val_accuracy,
                "kept_epoch": kept,  # whose weights were saved: the best one with restore_best, else the last
                "final_val_accuracy": rows[-1]["val_accuracy"],
                "final_train_accuracy": rows[-1]["accuracy"],
                "images_per_second": len(y_train) * len(rows) / sum(row["seconds"] for row in rows),
                "threads": settings.threads,  # what it was computed with: another count changes the last digits
            }}


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    with files.atomic_file(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(args: argparse.Namespace, params: Params) -> None:
    design = params.design(args.design)
    seed = params.run_seed(args.seed)
    out = paths.RunPaths(args.dataset, args.design, seed)
    # SIGTERM (a stopped job, a shut-down machine) ends the stage as Ctrl-C does: its MLflow
    # run is closed and the last epoch's checkpoint stays for the next `dvc repro` to resume.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    settings = run_settings(params, args.design, args.dataset)
    checkpoint = Checkpoint.of_run(args.dataset, args.design, seed,
                                   run_fingerprint(params, args.dataset, args.design, seed, settings))
    state = checkpoint.load()

    with tracking.stage_run(params, args.dataset, "train", model=args.design,
                            run_id=state["run_id"] if state else None, seed=seed) as run:
        if state:
            tracking.log_metrics({"resumed_after_epoch": state["epochs_done"]})
        tracking.log_params({"dataset": args.dataset, "design": args.design, "split_seed": params.seed,
                             "train": settings.as_params(),
                             "design_spec": params.raw["models"][args.design],
                             "normalize": params.normalize_for(args.dataset).__dict__,
                             "builtin": design.builtin or "none", "device": compute.device()})
        result = train(params, args.dataset, args.design, seed, checkpoint, state, run.id, settings)
        model = result["model"]
        with files.atomic_directory(out.model_dir) as tmp:
            model.save(tmp / "model.keras")
            (tmp / "summary.txt").write_text(result["summary"], encoding="utf-8")
            (tmp / "architecture.md").write_text(format_report(result["architecture"]), encoding="utf-8")
            files.write_json(tmp / "run.json", {"run_id": run.id, "dataset": args.dataset, "design": args.design,
                                                "seed": seed, "input_shape": result["meta"]["input_shape"],
                                                "threads": settings.threads})  # evaluate computes with them too
            # The data's meta and normalize's stats beside the model: the folder alone predicts (pipeline/inference.py)
            files.write_json(tmp / "preprocessing.json", {
                "meta": result["meta"], "normalize": files.read_json(paths.NORMALIZED / args.dataset / "stats.json")})
        write_history(out.history, result["history"])
        files.write_json(out.metrics_dir / "train.json", result["metrics"])
        tracking.log_metrics({k: v for k, v in result["metrics"].items()})
        tracking.log_metrics({f"arch_{key}": value for key, value in result["architecture"]["totals"].items()})
        tracking.log_artifact(out.model_dir / "summary.txt", "reports")
        tracking.log_artifact(out.model_dir / "architecture.md", "reports")
        tracking.log_text(out.history.read_text(encoding="utf-8"), "reports/history.csv")
    checkpoint.discard()  # the outputs are written: nothing left to resume
    log.info("trained %s on %s (seed %d) in %.1fs: best val accuracy %.4f", args.design, args.dataset, seed,
             result["metrics"]["train_seconds"], result["metrics"]["best_val_accuracy"])
