"""MLflow tracking: where the store is, and one way for every stage to log into it.

The store is `sqlite:///<root>/mlflow.db` with artifacts under `<root>/mlruns/`, where
<root> is the user's repository even when a queued `dvc exp run` executes in a temporary
copy (see `files.project_root`), so every run lands in the store `make ui` serves.
`MLFLOW_TRACKING_URI` overrides it (e.g. a shared server). One MLflow experiment per
dataset; train and evaluate of one (dataset, design) share one run.
`PIPELINE_TRACKING=off` turns tracking off (used to measure its overhead).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

from pipeline import files
from pipeline.config import Params, flatten

MAX_PARAM_LENGTH = 6000


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


def run_tags(dataset: str, stage: str, model: str | None) -> dict[str, str]:
    tags = {"stage": stage, "dataset": dataset, "dvc_experiment": os.environ.get("DVC_EXP_NAME", "workspace"),
            "git_commit": git_commit(), "mlflow.source.git.commit": git_commit()}
    if model:
        tags["model"] = model
    return tags


@contextlib.contextmanager
def stage_run(params: Params, dataset: str, stage: str, model: str | None = None,
              run_id: str | None = None) -> Iterator[str | None]:
    """Open (or, with `run_id`, reopen) the MLflow run of a stage; yields its id (None when off)."""
    if not enabled():
        yield None
        return
    mlflow = _mlflow()
    if run_id is not None and not _run_exists(run_id):
        run_id = None  # the store was reset since train ran: log into a fresh run rather than fail
    kwargs = {"run_id": run_id} if run_id else {"experiment_id": experiment_id(dataset),
                                                 "run_name": model or f"{stage}"}
    with mlflow.start_run(**kwargs) as run:
        mlflow.set_tags({**run_tags(dataset, stage if run_id is None else "train+evaluate", model)})
        if run_id is None:
            mlflow.log_params({"seed": params.seed})
        yield run.info.run_id


def _run_exists(run_id: str) -> bool:
    try:
        _mlflow().get_run(run_id)
        return True
    except Exception:
        return False


def log_params(values: dict[str, Any]) -> None:
    if not enabled():
        return
    mlflow = _mlflow()
    items = [(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in flatten(values).items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow.log_params(dict(items[start:start + 100]))


def log_metrics(values: dict[str, float], step: int | None = None) -> None:
    if enabled():
        _mlflow().log_metrics({key: float(value) for key, value in values.items()}, step=step)


def log_artifact(path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
    if enabled():
        _mlflow().log_artifact(str(path), artifact_path=artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    if enabled():
        _mlflow().log_text(text, artifact_file)
