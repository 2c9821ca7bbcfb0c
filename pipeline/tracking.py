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

A tracking server (`MLFLOW_TRACKING_URI=http://host:port`, e.g. `make server`: pipeline.server) is
checked before a stage does any work (`check_server`). If it stops answering mid-stage, the worker
keeps the run in the spool (pipeline.spool) and the stage goes on; `make resync` logs it later.

Stages log through a worker process (`python -m pipeline.tracking`, started by `warm_up`):
importing MLflow and opening its store take about 3 s of one core, which the worker spends
while the stage does its own work (TensorFlow's import leaves the second core idle), so
tracking adds almost nothing to a stage's wall time (bench/RESULTS.md). Log calls travel to
it as JSON lines. The evaluate stage also logs the trained model through it: the worker loads
TensorFlow while the stage does, then logs the model folder (as a model that takes raw pixels,
pipeline/inference.py) while the stage draws its figures.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator

from pipeline import exit_now, files, spool
from pipeline.config import Params, flatten
from pipeline.errors import UserError

if TYPE_CHECKING:
    import ssl

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


# --- A tracking server: checked before a stage works, so a stage never trains for an hour and then fails to log.

class TrackingServerError(UserError):
    """The tracking server MLFLOW_TRACKING_URI names does not answer, or refuses."""


SERVER_CHECK_TIMEOUT = 15.0  # seconds


def check_server() -> None:
    """Raise TrackingServerError, naming the URI and what to check, unless the tracking server stages
    log to answers an MLflow request. Stores that are not servers (the project's SQLite file) pass."""
    uri = tracking_uri()
    if enabled() and urllib.parse.urlparse(uri).scheme in ("http", "https"):
        problem = server_problem(uri)
        if problem is not None:
            raise TrackingServerError(f"MLFLOW_TRACKING_URI={uri}: {problem}; or set PIPELINE_TRACKING=off to run "
                                      f"without tracking")


def server_problem(uri: str, timeout: float = SERVER_CHECK_TIMEOUT) -> str | None:
    """What is wrong with the MLflow server at `uri` and what to check, or None when it answers.

    It must answer a request that reads its database (searching experiments), not only /health:
    a server whose database is down still says OK there. Plain urllib, not MLflow's client: a stage
    checks before MLflow has loaded (seconds), and MLflow's client would retry for minutes."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers=_server_credentials())
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_tls_context(uri)) as response:
            json.load(response)
    except urllib.error.HTTPError as error:
        status = f"HTTP {error.code} {error.reason}"
        if error.code in (401, 403):
            return (f"the server refused ({status}); check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
                    f"or MLFLOW_TRACKING_TOKEN")
        if error.code >= 500:
            return f"the server answers but fails ({status}); check its log and its database (`make server-status`)"
        return f"no MLflow tracking server answers there ({status}); check the URI (http://host:port)"
    except OSError as error:  # URLError, refused, unreachable, timed out, TLS
        reason = getattr(error, "reason", error)
        return (f"no server answers ({reason}); start it (`make server`) or check the host and port, "
                f"or unset MLFLOW_TRACKING_URI to log into this project's mlflow.db")
    except ValueError:
        return "something answers, but not as an MLflow tracking server; check the URI (http://host:port)"
    return None


def _server_credentials() -> dict[str, str]:
    """The HTTP headers MLflow's client sends from the same environment variables."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if token:
        return {"Authorization": f"Bearer {token}"}
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _tls_context(uri: str) -> ssl.SSLContext | None:
    """As MLflow's client verifies an https server: MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_INSECURE_TLS."""
    if not uri.startswith("https:"):
        return None
    import ssl  # only for https servers: it costs a stage 40 ms to import

    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        return ssl._create_unverified_context()  # the user asked for it, as MLflow's client honours it
    return ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))


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


# The code an MLflow model ships (pipeline/inference.py and what it imports), as a package of its
# own: the project's `pipeline` has much more, and a client may have it on its path too.
SHIPPED_PACKAGE = "pipeline_model"
SHIPPED_MODULES = ("inference.py", "preprocess.py", "lenet5_classic.py")


def _mlflow_model(model_dir: str, metrics: dict[str, float]) -> None:
    """The trained model folder as an MLflow model that takes raw uint8 pixels: pipeline/inference.py's
    Classifier (MLflow's loader-module workflow, no pickle), with the code it runs, the signature users
    call it with, the packages that load it, the class names, and its metrics.

    The signature and requirements are given rather than inferred: inferring them loads the model.
    """
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    mlflow = _mlflow()
    folder = Path(model_dir)
    meta = json.loads((folder / "preprocessing.json").read_text(encoding="utf-8"))["meta"]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *meta["image_shape"]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float64), (-1, len(meta["class_names"])))]))
    with tempfile.TemporaryDirectory(prefix="mlflow-model-") as work:
        data, code = Path(work, "trained_model"), Path(work, SHIPPED_PACKAGE)
        data.mkdir()
        code.mkdir()
        for name in ("model.keras", "preprocessing.json"):
            shutil.copy2(folder / name, data / name)
        (code / "__init__.py").write_text('"""The CNN pipeline\'s code that its MLflow models run."""\n', encoding="utf-8")
        for name in SHIPPED_MODULES:
            shutil.copy2(Path(__file__).with_name(name), code / name)
        warnings.filterwarnings("ignore", message=".*input example was not provided")  # the signature says it all
        logged = mlflow.pyfunc.log_model(
            name="model", loader_module=f"{SHIPPED_PACKAGE}.inference", data_path=str(data), code_paths=[str(code)],
            signature=signature, pip_requirements=_model_requirements(),
            metadata={"dataset": meta["dataset"], "class_names": meta["class_names"]})
    mlflow.log_metrics(metrics, model_id=logged.model_id)


def _model_requirements() -> list[str]:
    """Keras on TensorFlow, NumPy and MLflow, at the versions that trained and logged the model."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(*distributions: str) -> str:
        for distribution in distributions:
            with contextlib.suppress(PackageNotFoundError):
                return version(distribution)
        raise PackageNotFoundError(distributions[0])

    return [f"mlflow=={_mlflow().__version__}", f"keras=={installed('keras')}",
            f"tensorflow=={installed('tensorflow', 'tensorflow-cpu')}", f"numpy=={installed('numpy')}"]


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
    answers = _open_store()
    if with_keras:
        # Keras and TensorFlow, for log_model: MLflow checks the model's requirements against what is
        # installed, and finds TensorFlow's version by importing it. Only a stage that logs a model needs it.
        import pipeline.models  # noqa: F401
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
            _mlflow().search_experiments(max_results=1)
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
    import fcntl

    with open(f"{uri.removeprefix('sqlite:///')}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def _serve_run(start: dict[str, Any], requests: IO[str], replies: IO[str],
               answers: bool = True) -> tuple[str | None, bool]:
    """Log into one run until its end request; returns the stage's status (None if input closed) and whether
    the store still answers. When a tracking server stops answering (or did already), the run goes to the
    spool instead (pipeline.spool) and the stage goes on."""
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
        if not isinstance(error, _Spooled) and not spool.server_unreachable(error):
            raise
        entry = spool.SpooledRun.create(tracking_uri(), start, _stage_context(), run_id, logged, done, str(error))
        if run_id is None:
            print(entry.local_id, file=replies, flush=True)  # the stage is waiting for its run's id
        print(f"warning: tracking: {tracking_uri()}: {_spool_reason(error)}; this run is kept in {entry.folder} "
              f"and the stage goes on; when the server answers, `make resync` logs it", file=sys.stderr, flush=True)
        for line in requests if status is None else ():  # keep what the stage logs until it ends the run
            request = json.loads(line)
            if request[0] == "end":
                status = request[1]
                break
            entry.add(request)
        entry.finish(status)
        return status, answers and isinstance(error, _Spooled)
    return status, True


class _StageFailed(Exception):
    """Raised inside a run to end it FAILED (MLflow marks a run so when its block raises)."""


class _Spooled(Exception):
    """A run that goes to the spool without trying the server (the message says why)."""


def _spool_reason(error: Exception) -> str:
    if isinstance(error, _Spooled):
        return str(error)
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
        run = _reopened_run(entry.run_id) if own else _mlflow_run(**{**entry.start,
                                                                     "run_id": spool.resolved(entry.start["run_id"])})
        try:
            with run as run_id:
                entry.started(run_id)
                for request in entry.requests[entry.done:]:
                    _MLFLOW_LOGGERS[request[0]](*request[1:])
                    entry.logged_one()
                if entry.status != "FINISHED":
                    raise _StageFailed
        except _StageFailed:
            pass
    return run_id


@contextlib.contextmanager
def _reopened_run(run_id: str) -> Iterator[str]:
    with _mlflow().start_run(run_id=run_id) as run:
        yield run.info.run_id


def _worker_main() -> int:
    from pipeline.progress import setup_logging

    setup_logging()  # the stage's log format, and MLflow's INFO chatter off as in the stage
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the stage, which then ends its run
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars for uploads of KBs are noise
    # A server gone for more than about 10 s sends the run to the spool, rather than holding the stage's
    # end for MLflow's default of 7 retries over 4 minutes, twice (the failed call, then ending the run).
    for variable, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                            ("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")):
        os.environ.setdefault(variable, value)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything MLflow prints must not mix with the replies
    serve(sys.stdin, replies, with_keras="--with-keras" in sys.argv[1:])
    return 0


if __name__ == "__main__":
    exit_now(_worker_main())
