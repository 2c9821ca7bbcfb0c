"""MLflow tracking: where the store is, and one way for every stage to log into it.

The store is `sqlite:///<root>/mlflow.db` with artifacts under `<root>/mlruns/`, where
<root> is the user's repository even when a queued `dvc exp run` executes in a temporary
copy (see `files.project_root`), so every run lands in the store `make ui` serves.
`MLFLOW_TRACKING_URI` overrides it (e.g. a shared server). One MLflow experiment per
dataset; train and evaluate of one (dataset, design, seed) share one run, tagged `model` and
`seed` (the runs table's "Group by" on the `model` tag gathers a design's seeds in one row),
unless evaluate re-runs alone: then its evaluation gets its own run, tagged with the train
run's id (`_mlflow_run`).
`PIPELINE_TRACKING=off` turns tracking off (used to measure its overhead).

Stages log through a worker process (`python -m pipeline.tracking`, started by `warm_up`):
importing MLflow and opening its store take about 3 s of one core, which the worker spends
while the stage does its own work (TensorFlow's import leaves the second core idle), so
tracking adds almost nothing to a stage's wall time (bench/RESULTS.md). Log calls travel to
it as JSON lines. The evaluate stage also logs the trained model through it: the worker loads
Keras while the stage does, then reads the saved model and logs it while the stage draws its
figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Iterator

from pipeline import exit_now, files
from pipeline.config import Params, flatten

MAX_PARAM_LENGTH = 6000


class TrackingError(RuntimeError):
    """MLflow could not log (the worker's own error message is printed above this one)."""


def enabled() -> bool:
    return os.environ.get("PIPELINE_TRACKING", "on").lower() not in ("off", "0", "false", "no")


def project_store_uri() -> str:
    return f"sqlite:///{files.project_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or project_store_uri()


def artifact_root() -> Path:
    return files.project_root() / "mlruns"


def _mlflow() -> Any:
    import mlflow  # imported lazily: it costs seconds, and data-only code paths do not need it

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def experiment_id(dataset: str) -> str:
    mlflow = _mlflow()
    experiment = mlflow.get_experiment_by_name(dataset)
    if experiment is not None:
        return experiment.experiment_id
    # Artifacts go beside the project's own store; a user's server keeps its own artifact root.
    # (Compare URIs rather than test the variable: mlflow.set_tracking_uri sets it too.)
    location = (artifact_root() / dataset).as_uri() if tracking_uri() == project_store_uri() else None
    try:
        return mlflow.create_experiment(dataset, artifact_location=location, tags={"dataset": dataset})
    except Exception:  # another process created it first (queued experiments run in parallel)
        return mlflow.get_experiment_by_name(dataset).experiment_id


def git_commit() -> str:
    commit = os.environ.get("DVC_EXP_BASELINE_REV")
    if commit:
        return commit
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_experiment() -> str:
    return os.environ.get("DVC_EXP_NAME", "workspace")


def run_tags(dataset: str, stage: str, model: str | None, seed: int) -> dict[str, str]:
    tags = {"stage": stage, "dataset": dataset, "dvc_experiment": dvc_experiment(),
            "git_commit": git_commit(), "mlflow.source.git.commit": git_commit()}
    if model:  # a design's run: one per training seed
        tags.update(model=model, seed=str(seed))
    return tags


# --- What a stage calls. Outside a stage run, or with tracking off, the log calls do nothing.

def log_params(values: dict[str, Any]) -> None:
    _log("params", {key: str(value)[:MAX_PARAM_LENGTH] for key, value in flatten(values).items()})


def log_metrics(values: dict[str, float], step: int | None = None) -> None:
    """Metrics of the run (per epoch with `step`)."""
    _log("metrics", {key: float(value) for key, value in values.items()}, step)


def log_artifact(path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
    _log("artifact", str(Path(path).resolve()), artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    _log("text", text, artifact_file)


def log_model(model_file: str | os.PathLike[str], metrics: dict[str, float]) -> None:
    """The Keras model saved at `model_file` as the run's MLflow model, with `metrics` (its test
    scores) logged to the run and linked to the model, so the model's page shows them."""
    _log("model", str(Path(model_file).resolve()), {key: float(value) for key, value in metrics.items()})


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
def stage_run(params: Params, dataset: str, stage: str, model: str | None = None,
              run_id: str | None = None, seed: int | None = None) -> Iterator[_Untracked | _WorkerRun]:
    """Open (or, with `run_id`, reopen) the MLflow run of a stage; yields it (`.id` is None when off).

    `seed` is a design run's training seed (the run's `seed` param and tag); other stages log
    the data split's seed (params `seed`).

    The run ends FINISHED when the block completes and FAILED when it raises.
    """
    global _active
    if not enabled():
        yield _Untracked()
        return
    start = {"dataset": dataset, "stage": stage, "model": model, "run_id": run_id,
             "seed": params.seed if seed is None else seed}
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
            run.id  # replies come in order: the run's id, then its end
            worker.send("end", status)
            worker.reply()
        except TrackingError:
            if status == "FINISHED":
                raise  # else the stage's own error is the one to show


@contextlib.contextmanager
def _mlflow_run(dataset: str, stage: str, model: str | None, run_id: str | None, seed: int) -> Iterator[str]:
    """The MLflow run of a stage. With `run_id` (the train run evaluate evaluates), that run is continued
    only if it has not been evaluated yet and belongs to this DVC experiment: when evaluate alone re-runs
    (`dvc exp run -S evaluate.…`), the baseline's run stays as it was, and the new evaluation gets a run
    of its own, tagged `train_run_id` and holding the train run's params."""
    mlflow = _mlflow()
    trained = _get_run(run_id) if run_id is not None else None  # None too if the store was reset since train ran
    if trained is not None and stage == "train":  # a resumed training continues its own run
        with mlflow.start_run(run_id=run_id) as run:
            yield run.info.run_id
        return
    if trained is not None and _continues(trained):
        with mlflow.start_run(run_id=run_id) as run:
            mlflow.set_tag("stage", f"{trained.data.tags['stage']}+{stage}")
            yield run.info.run_id
        return
    with mlflow.start_run(experiment_id=experiment_id(dataset), run_name=model or stage) as run:
        mlflow.set_tags(run_tags(dataset, stage, model, seed))
        if trained is None:
            mlflow.log_params({"seed": seed})
        else:
            mlflow.set_tag("train_run_id", trained.info.run_id)
            # what was trained, so this run compares on its own; not the first evaluation's own params
            _mlflow_params({key: value for key, value in trained.data.params.items()
                            if not key.startswith(f"{stage}.")})
        yield run.info.run_id


def _continues(trained: Any) -> bool:
    """Whether an evaluation logs into the train run `trained`: its first one, in the same DVC experiment."""
    tags = trained.data.tags
    return tags.get("stage") == "train" and tags.get("dvc_experiment") == dvc_experiment()


def _get_run(run_id: str) -> Any:
    try:
        return _mlflow().get_run(run_id)
    except Exception:
        return None


def _mlflow_params(values: dict[str, str]) -> None:
    items = list(values.items())
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        _mlflow().log_params(dict(items[start:start + 100]))


def _mlflow_model(model_file: str, metrics: dict[str, float]) -> None:
    """The model in MLflow's Keras flavour, with the input/output signature users call it with
    and the packages that load it, and its metrics.

    Both are given rather than inferred: inferring the signature traces a prediction, and
    inferring the requirements loads the model again in a subprocess (seconds per stage).
    """
    import numpy as np
    import tensorflow as tf
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from pipeline.models import load_model

    def spec(shape: tuple) -> Schema:
        return Schema([TensorSpec(np.dtype(np.float32), (-1, *shape[1:]))])

    mlflow = _mlflow()
    model = load_model(model_file)
    signature = ModelSignature(inputs=spec(model.input_shape), outputs=spec(model.output_shape))
    requirements = [*mlflow.keras.get_default_pip_requirements(), f"tensorflow=={tf.__version__}"]
    logged = mlflow.keras.log_model(model, name="model", signature=signature, pip_requirements=requirements)
    mlflow.log_metrics(metrics, model_id=logged.model_id)


_MLFLOW_LOGGERS = {
    "params": _mlflow_params,
    "metrics": lambda values, step: _mlflow().log_metrics(values, step=step),
    "artifact": lambda path, artifact_path: _mlflow().log_artifact(path, artifact_path=artifact_path),
    "text": lambda text, artifact_file: _mlflow().log_text(text, artifact_file),
    "model": _mlflow_model,
}


# --- The worker process, and this process's handle on it.

class _Worker:
    def __init__(self, with_keras: bool) -> None:
        self.uri = tracking_uri()
        # The worker must import this package even when the stage was started from elsewhere.
        package_parent = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.uri,
               "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "pipeline.tracking", *(["--with-keras"] if with_keras else [])]
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
        return TrackingError(f"MLflow tracking failed: its worker process exited with status {code} (its error "
                             f"is above). Check the store at {tracking_uri()}, or set PIPELINE_TRACKING=off to "
                             f"run without tracking.")


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


def serve(requests: IO[str], replies: IO[str], with_keras: bool = False) -> None:
    """The worker's loop: each ["start", {...}] opens a run and is answered with its id; the log calls
    that follow go into it; ["end", status] ends it and is answered "ended"."""
    _mlflow().search_experiments(max_results=1)  # open (or create) the store before a run needs it
    if with_keras:
        import pipeline.models  # noqa: F401  Keras, for log_model: only a stage that logs a model needs it
    for line in requests:
        kind, start = json.loads(line)
        if kind != "start":
            raise ValueError(f"tracking worker: expected a start request, got {kind!r}")
        if _serve_run(start, requests, replies) is None:
            return  # input closed mid-run: the stage process died, and its run ended FAILED
        print("ended", file=replies, flush=True)


def _serve_run(start: dict[str, Any], requests: IO[str], replies: IO[str]) -> str | None:
    """Log into one run until its end request; returns the stage's status (None if input closed)."""
    status = None
    try:
        with _mlflow_run(**start) as run_id:
            print(run_id, file=replies, flush=True)
            for line in requests:
                kind, *args = json.loads(line)
                if kind == "end":
                    status = args[0]
                    break
                _MLFLOW_LOGGERS[kind](*args)
            if status != "FINISHED":
                raise _StageFailed
    except _StageFailed:
        pass
    return status


class _StageFailed(Exception):
    """Raised inside a run to end it FAILED (MLflow marks a run so when its block raises)."""


def _worker_main() -> int:
    from pipeline.progress import setup_logging

    setup_logging()  # the stage's log format, and MLflow's INFO chatter off as in the stage
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the stage, which then ends its run
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars for uploads of KBs are noise
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything MLflow prints must not mix with the replies
    serve(sys.stdin, replies, with_keras="--with-keras" in sys.argv[1:])
    return 0


if __name__ == "__main__":
    exit_now(_worker_main())
