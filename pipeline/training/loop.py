"""Fitting a design: the seeded, resumable batch pipeline, the per-epoch log and checkpoint, and the fit itself.

Epoch e's order and jitter depend on (seed, e) only, so a resumed run is identical to an uninterrupted one.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline import tracking
from pipeline.core import files, paths
from pipeline.core.process import gpu_present
from pipeline.core.progress import is_tty
from pipeline.designs import Design
from pipeline.designs.keras_build import build_model
from pipeline.designs.report import architecture_report
from pipeline.training import compute
from pipeline.training.augment import augment_batch
from pipeline.training.checkpoints import Checkpoint, fingerprint
from pipeline.training.compile import compile_model, load_model, loss_and_accuracy
from pipeline.training.recipe import TrainSettings
from pipeline.training.schedules import rate_at

log = logging.getLogger(__name__)


# Validation is a forward pass whose result does not depend on the batch size; big batches
# cut its cost per epoch (bench/RESULTS.md).
VALIDATION_BATCH_SIZE = 1024


def _fixed_pipeline(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """tf.data's autotuner off: on 2 cores it sometimes left training on one core for a whole
    run (bench/RESULTS.md); a fixed two-batch prefetch
    keeps both cores on the model. A CPU choice: feeding a GPU is what the autotuner is for."""
    if gpu_present():
        return dataset.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(2).with_options(options)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Batches of (x, y) in order: validation and evaluation."""
    return _fixed_pipeline(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size))


def training_batches(
    x: np.ndarray, y: np.ndarray, settings: TrainSettings, seed: int, first_epoch: int, pixel_scale: np.ndarray
) -> tf.data.Dataset:
    """The training batches of epochs first_epoch..settings.epochs-1, one epoch after another.

    Epoch e's order and jitter are stateless functions of (seed, e) (and the batch's index),
    never of how many epochs this process has run, so a run resumed at epoch e sees exactly
    the batches an uninterrupted one does. Indices are shuffled and gathered one batch at a
    time: no copy of the data in a shuffle buffer, no per-image work in Python. Augmentation
    (pipeline/training/augment.py) touches these batches only, never validation or test.
    """
    x_all, y_all = tf.constant(x), tf.constant(y)
    count, steps = len(y), steps_per_epoch(len(y), settings.batch_size)

    def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed=tf.stack([seed, epoch]))
        indices = tf.data.Dataset.from_tensor_slices(order).batch(settings.batch_size).enumerate()

        def gather(batch: tf.Tensor, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            images = tf.gather(x_all, index)
            if settings.augment.enabled:  # a key of its own: -(global batch number) - 1, never a shuffle's epoch
                images = augment_batch(
                    images, tf.stack([seed, -(epoch * steps + batch) - 1]), settings.augment, pixel_scale
                )
            return images, tf.gather(y_all, index)

        return indices.map(gather)

    return _fixed_pipeline(tf.data.Dataset.range(first_epoch, settings.epochs).flat_map(epoch_batches))


def steps_per_epoch(images: int, batch_size: int) -> int:
    return -(-images // batch_size)


class EpochLog(keras.callbacks.Callback):
    """Per epoch: the validation pass, one readable line (CI logs are not TTYs), a history row, the metrics
    to MLflow, the best epoch so far (restore_best and early stopping), and a checkpoint to resume from.

    The validation pass is this callback's, not Keras's `validation_data`: one prediction over the split,
    from which val_loss and val_accuracy are computed, so the outputs of the epoch whose weights are kept
    can be saved beside the model. Evaluate fits its temperature on them instead of predicting the
    validation split again (bench/RESULTS.md). It runs first, so later callbacks (pruning) see its metrics.
    """

    def __init__(
        self,
        settings: TrainSettings,
        steps: int,
        checkpoint: Checkpoint | None,
        state: dict[str, Any],
        validation: tuple[np.ndarray, np.ndarray],
    ) -> None:
        super().__init__()
        self.settings, self.steps, self.checkpoint = settings, steps, checkpoint
        self.validation_batches = batches(*validation, VALIDATION_BATCH_SIZE)
        self.validation_labels = np.asarray(validation[1])
        self.rows: list[dict[str, float]] = state.get("history", [])
        self.best_epoch: int = state.get("best_epoch", 0)
        self.best_val_accuracy: float = state.get("best_val_accuracy", -1.0)
        self.best_weights: list[np.ndarray] | None = state.get("best_weights")
        # the validation outputs of the best epoch (None: a checkpoint from before they were kept) and the last
        self.best_outputs: np.ndarray | None = state.get("best_validation_outputs")
        self.last_outputs: np.ndarray | None = None
        self.run_id = state.get("run_id")
        self.earlier_seconds: float = state.get("train_seconds", 0.0)  # before an interruption

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.fit_started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def validate(self, logs: dict) -> None:
        """The epoch's val_loss and val_accuracy, from one prediction; into `logs`, where later callbacks read them."""
        self.last_outputs = self.model.predict(self.validation_batches, verbose=0)
        labels = self.validation_labels
        logs["val_loss"], logs["val_accuracy"] = loss_and_accuracy(self.model, labels, self.last_outputs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = {} if logs is None else logs
        self.validate(logs)
        seconds = time.perf_counter() - self.started
        metrics = {k: float(v) for k, v in logs.items() if k != "learning_rate"}
        rate = rate_at(epoch * self.steps, self.settings, self.steps)  # the rate the epoch started with
        self.rows.append({"epoch": epoch + 1, **metrics, "learning_rate": rate, "seconds": seconds})
        if metrics["val_accuracy"] > self.best_val_accuracy:  # ties keep the earlier epoch
            self.best_epoch, self.best_val_accuracy = epoch + 1, metrics["val_accuracy"]
            if self.settings.restore_best:
                self.best_weights = [np.array(w) for w in self.model.get_weights()]
                self.best_outputs = self.last_outputs
        patience = self.settings.early_stopping_patience
        if patience and epoch + 1 - self.best_epoch >= patience:
            log.info(
                "early stop: no better validation accuracy for %d epochs since epoch %d", patience, self.best_epoch
            )
            self.model.stop_training = True
        if self.checkpoint and epoch + 1 < self.settings.epochs and not self.model.stop_training:
            self.checkpoint.save(self.model, self.state(), self.best_weights, self.best_outputs)
        # logged once the checkpoint is saved: after "epoch e/N", an interruption resumes at e + 1
        log.info(
            "epoch %d/%d %.1fs  %s  lr %.3g",
            epoch + 1,
            self.settings.epochs,
            seconds,
            "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())),
            rate,
        )
        tracking.log_metrics({**metrics, "learning_rate": rate, "epoch_seconds": seconds}, step=epoch + 1)

    def state(self) -> dict[str, Any]:
        return {
            "epochs_done": len(self.rows),
            "history": self.rows,
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "run_id": self.run_id,
            "train_seconds": self.train_seconds(),
        }

    def train_seconds(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self.fit_started

    def kept_outputs(self) -> np.ndarray | None:
        """The validation outputs of the weights train() returns: the best epoch's with restore_best, else the last."""
        return self.best_outputs if self.settings.restore_best else self.last_outputs


def run_fingerprint(design_spec: Any, dataset: str, seed: int, settings: TrainSettings) -> str:
    """What determines a training run, for its checkpoint: a checkpoint of other params is never resumed."""
    data = paths.NORMALIZED / dataset
    meta = files.read_json(data / "meta.json")  # first: a missing input is the user's error, said so
    return fingerprint(
        {
            "dataset": dataset,
            "meta": meta,
            "design": design_spec,
            "seed": seed,
            "train": settings.as_params(),
            "tensorflow": tf.__version__,
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        },
        [data / "train.npz", data / "val.npz", data / "stats.json"],
    )


def train(
    design: Design,
    dataset: str,
    seed: int,
    checkpoint: Checkpoint | None,
    settings: TrainSettings,
    state: dict[str, Any] | None = None,
    run_id: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, Any]:
    """Fit a design on a dataset with its recipe `settings` (threads resolved), from scratch or, given a
    checkpoint's `state`, from where it stopped. Without a checkpoint (a search's trial) nothing is saved
    to resume from; `callbacks` run after each epoch's log (a search's pruning)."""
    compute.use_threads(settings.threads)  # before the first op: TensorFlow fixes its pools then
    compute.warn_if_emulated(settings.precision)
    meta = files.read_json(paths.NORMALIZED / dataset / "meta.json")
    stats = files.read_json(paths.NORMALIZED / dataset / "stats.json")
    # mapped: TensorFlow copies them into its tensors anyway, so a loaded copy would only cost its page faults
    x_train, y_train = files.load_split(dataset, "train", mapped=True)
    x_val, y_val = files.load_split(dataset, "val", mapped=True)
    steps = steps_per_epoch(len(y_train), settings.batch_size)
    state = state or {}

    tf.config.experimental.enable_op_determinism()  # same params + seed -> same weights and metrics
    if state:
        model = load_model(checkpoint.model_file)  # weights, optimizer state and step count
        checkpoint.restore_random_states(model, state)
        log.info(
            "resuming %s on %s after epoch %d of %d (checkpoint %s)",
            design.name,
            dataset,
            state["epochs_done"],
            settings.epochs,
            checkpoint.folder,
        )
    else:
        model = compile_model(
            build_model(design, tuple(meta["input_shape"]), len(meta["class_names"]), seed, settings.precision),
            design,
            settings,
            steps,
        )
    summary = io.StringIO()
    model.summary(print_fn=lambda line, **_: summary.write(line + "\n"))
    architecture = architecture_report(model, settings.batch_size)
    log.info(
        "%s on %s: %d parameters, %d train / %d val images, %s",
        design.name,
        dataset,
        model.count_params(),
        len(y_train),
        len(y_val),
        settings,
    )

    epoch_log = EpochLog(settings, steps, checkpoint, {**state, "run_id": run_id}, (x_val, y_val))
    first_epoch = state.get("epochs_done", 0)
    model.fit(
        training_batches(x_train, y_train, settings, seed, first_epoch, np.asarray(stats["scale"])),
        epochs=settings.epochs,
        initial_epoch=first_epoch,
        steps_per_epoch=steps,
        callbacks=[epoch_log, *callbacks],
        shuffle=False,  # training_batches() shuffles, seeded; Keras cannot shuffle a dataset
        verbose=1 if is_tty() else 0,
    )
    train_seconds = epoch_log.train_seconds()
    rows = epoch_log.rows
    if settings.restore_best and epoch_log.best_epoch != rows[-1]["epoch"]:
        model.set_weights(epoch_log.best_weights)
        log.info(
            "restored the weights of epoch %d (best validation accuracy %.4f)",
            epoch_log.best_epoch,
            epoch_log.best_val_accuracy,
        )
    kept = epoch_log.best_epoch if settings.restore_best else rows[-1]["epoch"]
    validation_outputs = epoch_log.kept_outputs()
    if validation_outputs is None:  # resumed from a checkpoint that did not keep them
        validation_outputs = model.predict(epoch_log.validation_batches, verbose=0)
    return {
        "model": model,
        "summary": summary.getvalue(),
        "architecture": architecture,
        "history": rows,
        "validation_outputs": validation_outputs,  # the model's outputs on the validation split, in its order
        "settings": settings,
        "meta": meta,
        "metrics": {
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
        },
    }
