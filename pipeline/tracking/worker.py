"""The tracking worker: a process of its own that logs a stage's runs into MLflow (`python -m
pipeline.tracking.worker`, started by the client), and replays the spool into the store (`resync`).

Importing MLflow and opening its store take seconds of one core, which the worker spends while the
stage does its own work. One MLflow experiment per dataset; train and evaluate of one (dataset,
design, seed) share one run, tagged `model` and `seed`, unless evaluate re-runs alone: then its
evaluation gets its own run, tagged with the train run's id. If a tracking server stops answering,
the run goes to the spool (pipeline/tracking/spool.py) and the stage goes on.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import IO, Any

from pipeline.core import files
from pipeline.core.process import exit_now
from pipeline.tracking import export, registry, spool
from pipeline.tracking.store import artifact_root, check_server, mlflow_api, project_store_uri, tracking_uri


def experiment_id(dataset: str) -> str:
    mlflow = mlflow_api()
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
    tags = {
        "stage": stage,
        "dataset": dataset,
        "dvc_experiment": dvc_experiment(),
        "git_commit": git_commit(),
        "mlflow.source.git.commit": git_commit(),
    }
    if model:  # a design's run: one per training seed
        tags.update(model=model, seed=str(seed))
    return tags


@contextlib.contextmanager
def _mlflow_run(
    dataset: str,
    stage: str,
    model: str | None,
    run_id: str | None,
    seed: int,
    run_name: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """The MLflow run of a stage. With `run_id` (the train run evaluate or robustness measures), that run is
    continued only if that stage has not logged into it yet and it belongs to this DVC experiment: when evaluate
    alone re-runs (`dvc exp run -S evaluate.…`), the baseline's run stays as it was, and the new evaluation gets
    a run of its own, tagged `train_run_id` and holding the train run's params. A search's run is continued by
    every run of that study (another worker's too), and its trials' runs nest under it (`parent_run_id`)."""
    mlflow = mlflow_api()
    trained = _get_run(run_id) if run_id is not None else None  # None too if the store was reset since train ran
    if trained is not None and stage in RESUMED_STAGES:  # a resumed training or search continues its own run
        with mlflow.start_run(run_id=run_id) as run:
            yield run.info.run_id
        return
    if trained is not None and _continues(trained, stage):
        with mlflow.start_run(run_id=run_id) as run:
            mlflow.set_tag("stage", "+".join(sorted({*trained.data.tags["stage"].split("+"), stage}, key=_in_order)))
            yield run.info.run_id
        return
    with mlflow.start_run(experiment_id=experiment_id(dataset), run_name=run_name or model or stage) as run:
        mlflow.set_tags(run_tags(dataset, stage, model, seed))
        if parent_run_id is not None:
            mlflow.set_tag("mlflow.parentRunId", spool.resolved(parent_run_id))  # how MLflow nests runs
        if trained is None:
            mlflow.log_params({"seed": seed})
        else:
            mlflow.set_tag("train_run_id", trained.info.run_id)
            # what was trained, so this run compares on its own; not the first evaluation's own params
            _mlflow_params(
                {key: value for key, value in trained.data.params.items() if not key.startswith(f"{stage}.")}
            )
        yield run.info.run_id


# The stages that log into a design's train run, in the pipeline's order: its `stage` tag names them in
# this order whichever ran first (train+evaluate+robustness), so a search by tag does not depend on it.
DESIGN_RUN_STAGES = ("train", "evaluate", "robustness")
RESUMED_STAGES = ("train", "search")  # given their own run's id, they log into it again


def _in_order(stage: str) -> int:
    return DESIGN_RUN_STAGES.index(stage) if stage in DESIGN_RUN_STAGES else len(DESIGN_RUN_STAGES)


def _continues(trained: Any, stage: str) -> bool:
    """Whether `stage` (evaluate, robustness) logs into the train run `trained`: its first run of that stage,
    in the same DVC experiment."""
    tags = trained.data.tags
    stages = tags.get("stage", "").split("+")
    return stages[0] == "train" and stage not in stages and tags.get("dvc_experiment") == dvc_experiment()


def _get_run(run_id: str) -> Any:
    try:
        return mlflow_api().get_run(run_id)
    except Exception:
        return None


def _mlflow_params(values: dict[str, str]) -> None:
    items = list(values.items())
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        mlflow_api().log_params(dict(items[start : start + 100]))


def _log_input(path: str, name: str, context: str) -> None:
    """A MetaDataset: its digest is the file's MD5 and its schema the arrays' shapes, read from the .npz
    headers without loading the images (MLflow's numpy datasets would hold them in memory to hash them)."""
    import warnings
    import zipfile

    import numpy as np
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types.schema import Schema, TensorSpec

    specs = []
    with zipfile.ZipFile(path) as archive:
        for member in ("x.npy", "y.npy"):
            with archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(handle)
            specs.append(TensorSpec(dtype, (-1, *shape[1:]), member.removesuffix(".npy")))
    with warnings.catch_warnings():  # MLflow registers its local source twice (schemes "" and "file"), and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        source = resolve_dataset_source(path)
    dataset = MetaDataset(source, name=name, digest=files.md5_of(path)[:10], schema=Schema(specs))
    mlflow_api().log_input(dataset, context=context)


# What each request of a stage does in its run (pipeline/tracking/client.py sends them).
_MLFLOW_LOGGERS = {
    "params": _mlflow_params,
    # with the stage's timestamp: MLflow stores a metric of the same key, step, value and time once, so a request
    # replayed from the spool after it had reached the store (its answer lost) adds nothing
    "metrics": lambda values, step, timestamp=None: mlflow_api().log_metrics(values, step=step, timestamp=timestamp),
    "artifact": lambda path, artifact_path: mlflow_api().log_artifact(path, artifact_path=artifact_path),
    "text": lambda text, artifact_file: mlflow_api().log_text(text, artifact_file),
    "tags": lambda values: mlflow_api().set_tags(values),
    "input": _log_input,
    "champion": lambda *challenger: registry.promote(*challenger, experiment_name=dvc_experiment()),
    "model": export.log_model_folder,
}


def serve(requests: IO[str], replies: IO[str], with_keras: bool = False) -> None:
    """The worker's loop: each ["start", {...}] opens a run and is answered with its id; the log calls
    that follow go into it; ["end", status] ends it and is answered "ended"."""
    answers = _open_store()
    if with_keras:
        # Keras and TensorFlow, for log_model: MLflow checks the model's requirements against what is
        # installed, and finds TensorFlow's version by importing it. Only a stage that logs a model needs it.
        importlib.import_module("keras")
    for line in requests:
        kind, start = json.loads(line)
        if kind != "start":
            raise ValueError(f"tracking worker: expected a start request, got {kind!r}")
        status, answers = _serve_run(start, requests, replies, answers)
        if status is None:
            return  # input closed mid-run: the stage process died, and its run ended FAILED
        print("ended", file=replies, flush=True)


def _open_store() -> bool:
    """Open (or create) the store before a run needs it; False if it is a server that does not answer."""
    try:
        with _creating_store():
            mlflow_api().search_experiments(max_results=1)
    except Exception as error:
        if not spool.server_unreachable(error):
            raise
        return False
    return True


@contextlib.contextmanager
def _creating_store() -> Iterator[None]:
    """One process at a time opens a local SQLite store: the first opening creates its tables, and
    MLflow's migrations fail when two processes create them at once (stages side by side on a fresh
    clone: "Online migration expected to match one row ... 0 found"). A lock file beside the store."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        yield
        return
    with files.exclusive_lock(f"{uri.removeprefix('sqlite:///')}.lock"):
        yield


def _serve_run(
    start: dict[str, Any], requests: IO[str], replies: IO[str], answers: bool = True
) -> tuple[str | None, bool]:
    """Log into one run until its end request; returns the stage's status (None if input closed) and whether
    the store still answers. When a tracking server stops answering (or did already), the run goes to the
    spool instead (pipeline.tracking.spool) and the stage goes on."""
    status = run_id = None
    logged: list[list[Any]] = []  # the run's requests
    done = 0  # how many of them reached the store
    try:
        if not answers:
            raise _Spooled("it stopped answering earlier in this stage")
        if spool.waiting(start["run_id"]):
            raise _Spooled(f"the run this one continues ({start['run_id']}) is still in the spool")
        with _mlflow_run(**{**start, "run_id": spool.resolved(start["run_id"])}) as run_id:
            print(run_id, file=replies, flush=True)
            for line in requests:
                request = json.loads(line)
                if request[0] == "end":
                    status = request[1]
                    break
                logged.append(request)
                _MLFLOW_LOGGERS[request[0]](*request[1:])
                done += 1
            if status != "FINISHED":
                raise _StageFailed
    except _StageFailed:
        pass
    except Exception as error:
        if not isinstance(error, _Spooled) and not spool.server_unreachable(error) and not _refused(error):
            raise
        entry = spool.SpooledRun.create(tracking_uri(), start, _stage_context(), run_id, logged, done, str(error))
        if run_id is None:
            print(entry.local_id, file=replies, flush=True)  # the stage is waiting for its run's id
        print(
            f"warning: tracking: {tracking_uri()}: {_spool_reason(error, start['dataset'])}; this run is kept in "
            f"{entry.folder} and the stage goes on; when the server {'lets it' if _refused(error) else 'answers'}, "
            f"`make resync` logs it",
            file=sys.stderr,
            flush=True,
        )
        for line in requests if status is None else ():  # keep what the stage logs until it ends the run
            request = json.loads(line)
            if request[0] == "end":
                status = request[1]
                break
            entry.add(request)
        entry.finish(status)
        return status, answers and isinstance(error, _Spooled)
    return status, True


def _refused(error: Exception) -> bool:
    """The server's permissions do not let this user log the run: it is kept, as when the server is away,
    until the admin grants them (the stage's work is not lost to a permission)."""
    return getattr(error, "error_code", None) == "PERMISSION_DENIED"


def _refusal(dataset: str) -> str:
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "this user"
    return (
        f"the server does not let {user} log into the experiment {dataset!r} (PERMISSION_DENIED); "
        f"ask its admin for EDIT on it (the users `make server-user` creates have it)"
    )


class _StageFailed(Exception):
    """Raised inside a run to end it FAILED (MLflow marks a run so when its block raises)."""


class _Spooled(Exception):
    """A run that goes to the spool without trying the server (the message says why)."""


def _spool_reason(error: Exception, dataset: str) -> str:
    if isinstance(error, _Spooled):
        return str(error)
    if _refused(error):
        return _refusal(dataset)
    cause: BaseException = error
    while cause.__cause__ or cause.__context__:  # the innermost: requests' ConnectionError, RetryError, ...
        cause = cause.__cause__ or cause.__context__
    return f"the server stopped answering ({type(cause).__name__})"


def _stage_context() -> dict[str, str]:
    """What a run's tags come from besides its start request, for a resync in another environment."""
    return {"DVC_EXP_NAME": dvc_experiment(), "DVC_EXP_BASELINE_REV": git_commit()}


def replay(entry: spool.SpooledRun) -> str:
    """Log spooled run `entry` into the tracking store; returns the run's id. Into its own run where the
    store has it (what had not reached it), else into a new run made as the stage would have made it (all
    of it). If the server fails again, `entry` records how far it got, and the error propagates."""
    with spool.environment(entry.context):
        own = entry.run_id is not None and _get_run(entry.run_id) is not None
        run = (
            _reopened_run(entry.run_id)
            if own
            else _mlflow_run(**{**entry.start, "run_id": spool.resolved(entry.start["run_id"])})
        )
        try:
            with run as run_id:
                entry.started(run_id)
                for request in entry.requests[entry.done :]:
                    _MLFLOW_LOGGERS[request[0]](*request[1:])
                    entry.logged_one()
                if entry.status != "FINISHED":
                    raise _StageFailed
        except _StageFailed:
            pass
    return run_id


@contextlib.contextmanager
def _reopened_run(run_id: str) -> Iterator[str]:
    with mlflow_api().start_run(run_id=run_id) as run:
        yield run.info.run_id


def resync(to: str | None = None) -> list[tuple[spool.SpooledRun, str]]:
    """Log every kept run into its server (or `to`), oldest first; returns (entry, run id) of each.
    Stops at the first server that does not answer, keeping that entry and the ones after it."""
    replayed = []
    for entry in spool.entries():
        if entry.in_progress():
            print(f"resync: skipping {entry.folder.name}: its stage is still running", file=sys.stderr)
            continue
        uri, description = to or entry.uri, entry.describe()
        os.environ["MLFLOW_TRACKING_URI"] = uri  # where tracking logs
        check_server()
        try:
            run_id = replay(entry)
        except Exception as error:
            if _refused(error):
                raise spool.ResyncError(
                    f"{uri}: {_refusal(entry.start['dataset'])}; {entry.folder} is kept for the next `make resync`"
                ) from None
            if not spool.server_unreachable(error):
                raise
            raise spool.ResyncError(
                f"{uri}: stopped answering while {entry.folder} was replayed (what reached it is "
                f"recorded); run `make resync` again when it answers"
            ) from None
        entry.remove()
        replayed.append((entry, run_id))
        print(f"resync: {description}: logged into run {run_id}", flush=True)
    return replayed


def _worker_main() -> int:
    from pipeline.core.progress import setup_logging

    setup_logging()  # the stage's log format, and MLflow's INFO chatter off as in the stage
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the stage, which then ends its run
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars for uploads of KBs are noise
    # A server gone for more than about 10 s sends the run to the spool, rather than holding the stage's
    # end for MLflow's default of 7 retries over 4 minutes, twice (the failed call, then ending the run).
    for variable, value in (
        # MLflow's telemetry thread removes a variable from os.environ while requests reads it (a KeyError
        # seen once in 3,700 calls, bench/RESULTS.md); the project logs to its own store or server only
        ("MLFLOW_DISABLE_TELEMETRY", "true"),
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3"),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "60"),
    ):
        os.environ.setdefault(variable, value)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything MLflow prints must not mix with the replies
    serve(sys.stdin, replies, with_keras="--with-keras" in sys.argv[1:])
    return 0


if __name__ == "__main__":
    exit_now(_worker_main())
