"""What a stage calls to log: params, per-epoch metrics, artifacts, the model, inside `stage_run`.

The calls travel as JSON lines to the tracking worker (pipeline/tracking/worker.py), a process
started by `warm_up` that loads MLflow while the stage does its own work. Outside a stage run,
or with tracking off, the log calls do nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.tracking.store import enabled, tracking_uri

MAX_PARAM_LENGTH = 6000


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as `a.b.0.c` keys, the form MLflow params and `dvc exp show` use."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class TrackingError(RuntimeError):
    """MLflow could not log (the worker's own error message is printed above this one)."""


# --- What a stage calls. Outside a stage run, or with tracking off, the log calls do nothing.


def log_params(values: dict[str, Any]) -> None:
    _log("params", {key: str(value)[:MAX_PARAM_LENGTH] for key, value in flatten(values).items()})


def log_metrics(values: dict[str, float], step: int | None = None) -> None:
    """Metrics of the run (per epoch with `step`), stamped now: when they reach the store (later, through
    the spool), they keep the time they were logged, and a request logged twice is stored once."""
    _log("metrics", {key: float(value) for key, value in values.items()}, step, int(time.time() * 1000))


def log_artifact(path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
    _log("artifact", str(Path(path).resolve()), artifact_path)


def log_tags(values: dict[str, str]) -> None:
    _log("tags", {key: str(value) for key, value in values.items()})


def log_text(text: str, artifact_file: str) -> None:
    _log("text", text, artifact_file)


def promote(dataset: str, design: str, seed: int, predictions: str | os.PathLike[str]) -> None:
    """Register this (design, seed)'s model as a challenger for the dataset's champion
    (pipeline/tracking/registry.py); the worker says what it decided."""
    _log("champion", dataset, design, seed, str(Path(predictions).resolve()))


def log_input(path: str | os.PathLike[str], name: str, context: str) -> None:
    """A split the run read (a normalized .npz), as one of MLflow's datasets: the UI's Datasets column
    names it, with its digest and shapes, and `context` (training, validation, testing)."""
    _log("input", str(Path(path).resolve()), name, context)


def log_model(model_dir: str | os.PathLike[str], metrics: dict[str, float]) -> None:
    """The trained model folder `model_dir` as the run's MLflow model (raw pixels in, see `_mlflow_model`),
    with `metrics` (its test scores) logged to the run and linked to the model, so the model's page shows them."""
    _log("model", str(Path(model_dir).resolve()), {key: float(value) for key, value in metrics.items()})


class _Untracked:
    """What `stage_run` yields when tracking is off: a run without an id."""

    id = None


class _WorkerRun:
    """A run the tracking worker holds; its id arrives when the worker has opened it."""

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self._id: str | None = None

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = self.worker.reply()
        return self._id

    def log(self, kind: str, *args: Any) -> None:
        self.worker.send(kind, *args)


_active: _WorkerRun | None = None  # the stage run the log calls go to


def _log(kind: str, *args: Any) -> None:
    if _active is not None:
        _active.log(kind, *args)


@contextlib.contextmanager
def stage_run(
    params: Any,
    dataset: str,
    stage: str,
    model: str | None = None,
    run_id: str | None = None,
    seed: int | None = None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[_Untracked | _WorkerRun]:
    """Open (or, with `run_id`, reopen) the MLflow run of a stage; yields it (`.id` is None when off).

    `params`: the run's Params (its `seed`, the data split's, is logged unless `seed` is given).
    `seed` is a design run's training seed (the run's `seed` param and tag); other stages log
    the data split's seed (params `seed`). `run_name` names a new run (default: the model, else the stage);
    `parent_run_id` nests it under that run (a search's trials under the search's run).

    The run ends FINISHED when the block completes and FAILED when it raises.
    """
    global _active
    if not enabled():
        yield _Untracked()
        return
    start = {
        "dataset": dataset,
        "stage": stage,
        "model": model,
        "run_id": run_id,
        "seed": params.seed if seed is None else seed,
    }
    start |= {key: value for key, value in (("run_name", run_name), ("parent_run_id", parent_run_id)) if value}
    worker = _running_worker()
    worker.send("start", start)
    _active = run = _WorkerRun(worker)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        _active = None
        try:
            _ = run.id  # replies come in order: the run's id, then its end
            worker.send("end", status)
            worker.reply()
        except TrackingError:
            if status == "FINISHED":
                raise  # else the stage's own error is the one to show


# --- The worker process, and this process's handle on it.


class _Worker:
    def __init__(self, with_keras: bool) -> None:
        self.uri = tracking_uri()
        # The worker must import this package even when the stage was started from elsewhere.
        package_parent = str(Path(__file__).resolve().parents[1])
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.uri,
            "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
        }
        command = [sys.executable, "-m", "pipeline.tracking.worker", *(["--with-keras"] if with_keras else [])]
        self.process = subprocess.Popen(command, env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def send(self, kind: str, *args: Any) -> None:
        assert self.process.stdin is not None
        try:
            if self.process.poll() is not None:
                raise BrokenPipeError
            self.process.stdin.write(json.dumps([kind, *args]) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self.failed() from None

    def reply(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise self.failed()
        return line.rstrip("\n")

    def failed(self) -> TrackingError:
        code = self.process.wait()
        return TrackingError(
            f"MLflow tracking failed: its worker process exited with status {code} (its error "
            f"is above). Check the store at {tracking_uri()}, or set PIPELINE_TRACKING=off to "
            f"run without tracking."
        )


_worker: _Worker | None = None


def warm_up(with_keras: bool = False) -> None:
    """Start the tracking worker now, so that MLflow loads while the stage works; `with_keras`
    if the stage will `log_model`, so that Keras loads there too (seconds of one core).

    Stages call this first thing (train and evaluate before they import TensorFlow). The worker
    lives as long as this process: it exits on its own when its input closes.
    """
    if enabled():
        _running_worker(with_keras)


def _running_worker(with_keras: bool = False) -> _Worker:
    global _worker
    if _worker is not None and (_worker.process.poll() is not None or _worker.uri != tracking_uri()):
        with contextlib.suppress(OSError):  # dead, or bound to another store: it exits when its input closes
            _worker.process.stdin.close()
        _worker = None
    if _worker is None:
        _worker = _Worker(with_keras)
    return _worker
