"""Benchmark: the team's MLflow tracking server under N concurrent clients; the SQLite store under a DVC queue.

Why: issue 28 asks what a class or team's server takes before logging slows the stages down, and
whether anything is lost on the way (docs/several-machines.md: one server for every machine).

Server part (`--server`): per configuration (`--config workers=2`, `--config workers=4,pool_size=20`,
...) one tracking server is started in a scratch folder exactly as a user starts it (`python -m
pipeline server start --dir DIR --port P --workers W`: PostgreSQL, proxied artifacts), then, for each
N in `--clients`, N client processes log at once, each the way the tracking worker logs a stage
(pipeline/tracking/worker.py): one experiment per dataset, one run per (dataset, design) that train
opens and evaluate continues; tags, flattened params, per-epoch metrics at step=epoch (what
training/loop.py logs), train's and evaluate's end metrics, small artifacts (log_artifact and
log_text), the run ended FINISHED twice. A client repeats such runs, back to back, until
`--seconds` have passed since every client of that N was ready: the work of a run is fixed, and
each N runs for about the same time. Every MLflow call (MlflowClient: create_run, log_batch,
log_artifact, set_terminated, ...) is timed with perf_counter. Afterwards every run is read back
from the server: its status must be FINISHED, each metric's history (get_metric_history) must hold
exactly the (step, value) pairs the client logged, no more (duplicated) and no fewer (lost), its
artifacts must be listed, and the server must hold no run the clients did not create (a create_run
retried after a timeout). While clients log, PostgreSQL's connections (pg_stat_activity) are
sampled, and the CPU time of the server's processes, the database's and the clients' is taken; the
server's log (uvicorn's access lines: HTTP statuses; tracebacks, QueuePool timeouts) and
PostgreSQL's log are searched afterwards.

The knee: the smallest N whose median latency per call (p50) is at least twice N=1's; the same for
p95 is reported beside it.

Clients are processes started by a forkserver that has imported MLflow once: separate processes
(their own GIL and HTTP connections) as stages on several machines are, without each spawned
child importing MLflow again (seconds of CPU and 200 MB each, times 64, on the 2 cores measured).
They run on the same machine as the server: past a few clients the server and its clients share
the cores, which the CPU figures show.

If the server folder holds `admin.credentials` (INI, section [mlflow]: mlflow_tracking_username,
mlflow_tracking_password), as a server started with logins writes, clients log in with them
(MLFLOW_TRACKING_USERNAME/PASSWORD); they are never printed.

SQLite part (`--sqlite-queue`): no server. A throwaway copy of the project on tiny MNIST-format data
(the tests' fixtures) whose data stages are built and committed; four experiments queued
(`dvc exp run --queue -S train.batch_size=...`) and run by `dvc queue start -j 4`, each logging into
the project's own mlflow.db, as queued experiments do. Checked: every experiment succeeded, no
"database is locked" (nor a run sent to the spool) in any `dvc queue logs`, every MLflow run in
mlflow.db FINISHED, and every design run holding each per-epoch metric once for every epoch.

Usage: .venv/bin/python bench/bench_server_load.py [--clients 1,4,16,64] [--seconds 30] [--epochs 10]
           [--config workers=2 --config workers=4] [--server | --sqlite-queue] [--queue-epochs 2]
Without --server or --sqlite-queue both parts run; one part alone keeps the other's figures in the
results file. Writes bench/results/server_load.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import math
import multiprocessing
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scratch import ROOT, load, write_result

from tests.conftest import copy_project, run, tiny_params, tool_env, write_mirror

RESULT = ROOT / "bench" / "results" / "server_load.json"
DATASETS = ("mnist", "fashion_mnist", "gtsrb")  # one MLflow experiment each, as the stages make them
DESIGNS = ("lenet5_modern", "lenet5_classic", "student_a", "student_b")
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds")
TRAIN_METRICS = ("train_seconds", "best_val_accuracy", "best_epoch")
ARCH_METRICS = ("arch_params", "arch_macs", "arch_activation_bytes")
TEST_METRICS = ("test_loss", "test_accuracy", "test_macro_f1", "predict_latency_ms")
REPORTS = ("summary.txt", "architecture.md", "history.csv", "per_class.json", "predictions.csv", "confusion.csv")
# As the tracking worker sets them (pipeline/tracking/worker.py): what a stage's client retries.
CLIENT_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
POOL_VARIABLES = {
    "pool_size": "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE",
    "max_overflow": "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW",
}
READY_TIMEOUT = 600  # seconds for N clients to start and make their first call on a busy machine
ABANDON_AFTER = 2  # a client's last run must end by twice --seconds; after that it starts no more calls
LATE = 300  # seconds a call in flight at that deadline may still take (MLflow's client: 60 s timeout, 3 retries)
LOG_PATTERNS = {
    "traceback": r"Traceback \(most recent call last\)",
    "queuepool_limit": r"QueuePool limit",
    "too_many_clients": r"too many clients|remaining connection slots",
    "timeout": r"timed? ?out",
    "database_locked": r"database is locked",
    "error_lines": r"\bERROR\b|\bFATAL\b",
}
QUEUE_BATCH_SIZES = (16, 32, 64, 128)
# The server's default (2 uvicorn workers), twice as many, and one: a single uvicorn process binds its
# socket through asyncio, which turns Nagle's algorithm off (TCP_NODELAY); the supervisor of several
# workers binds it itself and leaves it on (uvicorn issue 3149), so each answer on a kept-alive
# connection waits for the client's delayed ACK. Then the default workers with a pool of 41
# connections each (31 + SQLAlchemy's default overflow of 10; MLflow ignores an overflow of 0): one
# more than the request threads of a worker (anyio's 40), because MLflow's log_batch holds one
# connection while it asks for a second, and 2 x 41 stays under PostgreSQL's 100 connections.
DEFAULT_CONFIGS = ("workers=2", "workers=4", "workers=1", "workers=2,pool_size=31")


def say(message: str) -> None:
    print(f"server-load: {message}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    import platform

    import psutil

    from pipeline.training import compute

    flags = compute.cpu_flags()
    return {
        "cpu": compute.cpu_model(),
        "cores": compute.available_cores(),
        "avx512f": "avx512f" in flags,
        "amx": "amx_tile" in flags,
        "ram_gib": round(psutil.virtual_memory().total / 2**30),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


# ---- The clients ------------------------------------------------------------------------------

_FAILED = object()  # what a timed call returns when it raised (MlflowClient's log calls return None)


class _Abandoned(Exception):
    """The client's time is up in the middle of a run: a server that stalls must not hold the benchmark."""


class Calls:
    """Every MLflow call of one client: its latency by kind, and the errors it raised. No call starts
    after `deadline` (time.monotonic)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.error_samples: list[str] = []

    def __call__(self, kind: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        if time.monotonic() > self.deadline:
            raise _Abandoned
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        except Exception as error:
            self.errors[kind] += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(f"{kind}: {type(error).__name__}: {str(error)[:300]}")
            return _FAILED
        finally:
            self.seconds[kind].append(time.perf_counter() - started)


def _count_retries() -> Any:
    """A logging handler counting the HTTP retries urllib3 makes under MLflow's client: a retried call
    can succeed, its cost shows only in its latency, and a retried POST is how a run or metric could be
    logged twice."""
    import logging

    class Retries(logging.Handler):
        count = 0

        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "Incremented Retry" in message or message.startswith("Retrying"):
                self.count += 1

    handler = Retries()
    for name, level in (("urllib3.util.retry", logging.DEBUG), ("urllib3.connectionpool", logging.WARNING)):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.addHandler(handler)
        logger.propagate = False  # counted, not printed by 64 clients
    return handler


def _artifact_files(folder: Path) -> dict[str, Path]:
    """Small files the size of train's and evaluate's reports."""
    scores = {"precision": 0.99, "recall": 0.98, "f1-score": 0.985}
    texts = {
        "summary.txt": "Model: lenet5_modern\n" + "layer  output  params\n" * 30,
        "architecture.md": "| layer | output | params | MACs |\n|---|---|---:|---:|\n"
        + "| conv | 28x28x6 | 156 |\n" * 20,
        "per_class.json": json.dumps({str(i): scores for i in range(10)}),
        "predictions.csv": "index,label,predicted,confidence\n" + "".join(f"{i},3,3,0.99\n" for i in range(200)),
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = folder / name
        paths[name].write_text(text)
    return paths


def _one_run(
    client: Any, calls: Calls, label: str, index: int, number: int, epochs: int, params: dict, files: dict
) -> dict | None:
    """One (dataset, design) run as train then evaluate log it through the tracking worker; returns what
    the server acknowledged (metrics by key as [step, value], artifacts), what it may hold from calls
    that failed ("uncertain"), or None when the run could not be created. A run cut short by the
    client's deadline is returned "abandoned"."""
    dataset = DATASETS[(index + number) % len(DATASETS)]
    design = DESIGNS[index % len(DESIGNS)]
    rng = random.Random(f"{label}/{index}/{number}")  # values unique per run: a duplicate is an exact copy
    experiment = calls("get_experiment_by_name", client.get_experiment_by_name, dataset)
    if experiment is _FAILED or experiment is None:
        return None
    tags = {
        "stage": "train",
        "dataset": dataset,
        "model": design,
        "seed": str(number),
        "dvc_experiment": "workspace",
        "git_commit": "0" * 40,
        "bench_round": label,
        "bench_client": str(index),
    }
    run = calls("create_run", client.create_run, experiment.experiment_id, run_name=design, tags={"bench_round": label})
    if run is _FAILED:
        return None
    run_id = run.info.run_id
    record: dict[str, Any] = {
        "run_id": run_id,
        "metrics": {},
        "uncertain": {},
        "artifacts": [],
        "finished": False,
        "abandoned": False,
    }
    try:
        _log_run(client, calls, record, tags, epochs, params, files, rng, number)
    except _Abandoned:
        record["abandoned"] = True
    return record


def _log_run(
    client: Any, calls: Calls, record: dict, tags: dict, epochs: int, params: dict, files: dict, rng: Any, number: int
) -> None:
    from mlflow.entities import Metric, Param, RunTag

    run_id = record["run_id"]

    def metrics(values: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        batch = [Metric(key, value, stamp, step) for key, value in values.items()]
        logged = calls("log_batch(metrics)", client.log_batch, run_id, metrics=batch) is not _FAILED
        for key, value in values.items():
            record["metrics" if logged else "uncertain"].setdefault(key, []).append([step, value])

    def artifact(name: str) -> None:
        if name in files:
            done = calls("log_artifact", client.log_artifact, run_id, str(files[name]), "reports")
        else:  # history.csv and confusion.csv: log_text, as the stages log them
            done = calls("log_text", client.log_text, run_id, f"{name}\n" + "1,0.5\n" * epochs, f"reports/{name}")
        if done is not _FAILED:
            record["artifacts"].append(f"reports/{name}")

    def value() -> float:
        return round(rng.random(), 6)

    # train: the worker's start_run, set_tags, its seed param, then the stage's params in batches of 100
    calls("log_batch(tags)", client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    items = [Param(key, value_) for key, value_ in {"seed": str(number), **params}.items()]
    for start in range(0, len(items), 100):
        calls("log_batch(params)", client.log_batch, run_id, params=items[start : start + 100])
    for epoch in range(1, epochs + 1):
        metrics({key: value() for key in EPOCH_METRICS}, step=epoch)
    metrics({key: value() for key in TRAIN_METRICS}, step=0)
    metrics({key: value() for key in ARCH_METRICS}, step=0)
    for name in ("summary.txt", "architecture.md", "history.csv"):
        artifact(name)
    trained = calls("set_terminated", client.set_terminated, run_id, "FINISHED") is not _FAILED
    # evaluate: the worker reads the train run, reopens it (start_run(run_id)), logs into it
    calls("get_run", client.get_run, run_id)
    calls("update_run", client.update_run, run_id, status="RUNNING")
    calls("set_tag", client.set_tag, run_id, "stage", "train+evaluate")
    evaluate = [Param("evaluate.sample_images", "16"), Param("evaluate.misclassified", "16")]
    calls("log_batch(params)", client.log_batch, run_id, params=evaluate)
    metrics({key: value() for key in TEST_METRICS}, step=0)
    for name in ("per_class.json", "predictions.csv", "confusion.csv"):
        artifact(name)
    evaluated = calls("set_terminated", client.set_terminated, run_id, "FINISHED") is not _FAILED
    record["finished"] = trained and evaluated


def client_main(
    uri: str,
    folder: Path,
    env: dict[str, str],
    index: int,
    label: str,
    seconds: float,
    epochs: int,
    params: dict[str, str],
    barrier: Any,
    results: Any,
) -> None:
    """One client process: ready (its HTTP connection made), then at the barrier's release whole runs
    until `seconds` have passed; puts its calls' latencies and its runs on `results`. Its artifact files
    go in `folder`, which the parent removes."""
    os.environ.update(env)
    try:
        # MLflow prints every ended run's URL: 64 clients' worth of noise
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            results.put(_client(uri, folder, index, label, seconds, epochs, params, barrier))
    except BaseException:
        barrier.abort()  # the parent and the other clients stop waiting
        results.put({"index": index, "crashed": traceback.format_exc()[-3000:], "started": time.monotonic()})


def _client(
    uri: str, folder: Path, index: int, label: str, seconds: float, epochs: int, params: dict, barrier: Any
) -> dict:
    from mlflow import MlflowClient

    retries = _count_retries()
    folder.mkdir()
    files = _artifact_files(folder)
    client = MlflowClient(uri)
    client.search_experiments(max_results=1)  # the session and its connection, outside the measure
    barrier.wait(timeout=READY_TIMEOUT)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    # Whole runs until `seconds`; the last must end by ABANDON_AFTER times that, or it is abandoned.
    calls, runs, failed_runs = Calls(started + ABANDON_AFTER * seconds), [], 0
    with contextlib.suppress(_Abandoned):
        while time.monotonic() - started < seconds or not (runs or failed_runs):
            record = _one_run(client, calls, label, index, len(runs) + failed_runs, epochs, params, files)
            if record is None:
                failed_runs += 1
            else:
                runs.append(record)
    ended = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "index": index,
        "started": started,
        "ended": ended,
        "seconds": dict(calls.seconds),
        "errors": dict(calls.errors),
        "error_samples": calls.error_samples,
        "retries": retries.count,
        "runs": runs,
        "runs_not_created": failed_runs,
        "cpu_seconds": after.ru_utime - cpu.ru_utime + after.ru_stime - cpu.ru_stime,
    }


# ---- The server and what is watched while clients log ----------------------------------------


def parse_config(text: str) -> dict[str, int]:
    """`workers=4,pool_size=20,max_overflow=5` -> {"workers": 4, ...}; workers defaults to the server's."""
    from pipeline.tracking.server import DEFAULT_WORKERS

    config = {"workers": DEFAULT_WORKERS}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in ("workers", *POOL_VARIABLES) or not value.isdigit():
            raise SystemExit(f"--config {text}: expected workers=N[,pool_size=N][,max_overflow=N], got {part!r}")
        config[key] = int(value)
    return config


def config_label(config: dict[str, int]) -> str:
    return ",".join(f"{key}={value}" for key, value in config.items())


def credentials(folder: Path) -> dict[str, str]:
    """MLFLOW_TRACKING_USERNAME/PASSWORD from the folder's admin.credentials, when the server has logins."""
    path = folder / "admin.credentials"
    if not path.is_file():
        return {}
    parser = configparser.ConfigParser()
    parser.read(path)
    section = parser["mlflow"]
    return {
        "MLFLOW_TRACKING_USERNAME": section["mlflow_tracking_username"],
        "MLFLOW_TRACKING_PASSWORD": section["mlflow_tracking_password"],
    }


def _server_cli(*arguments: Any, env: dict[str, str] | None = None, check: bool = True) -> None:
    command = [sys.executable, "-m", "pipeline", "server", *map(str, arguments)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if check and done.returncode:
        raise RuntimeError(f"`{' '.join(command[1:])}` failed ({done.returncode}):\n{done.stderr[-3000:]}")


@contextlib.contextmanager
def tracking_server(config: dict[str, int]) -> Iterator[tuple[str, Path]]:
    """`python -m pipeline server start` on PostgreSQL in a scratch folder; stopped (and removed) at the end."""
    from pipeline.tracking import server

    if server.postgres_bin() is None:
        say("PostgreSQL is not installed: `python -m pipeline server install`")
        _server_cli("install")
    # Not under a 0700 folder: as root, the `postgres` user runs the cluster and must reach it.
    folder = Path(tempfile.mkdtemp(prefix="bench-server-load-"))
    folder.chmod(0o755)
    port = server.free_port()
    env = {**os.environ, **{POOL_VARIABLES[key]: str(value) for key, value in config.items() if key != "workers"}}
    try:
        say(f"{config_label(config)}: starting the server (PostgreSQL) in {folder} on port {port}")
        _server_cli("start", "--dir", folder, "--port", port, "--workers", config["workers"], env=env)
        yield f"http://127.0.0.1:{port}", folder
    finally:
        say(f"{config_label(config)}: stopping the server")
        _server_cli("stop", "--dir", folder, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _tree(pid: int | None) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except (psutil.Error, TypeError, ValueError):
        return []


class CpuTime:
    """CPU seconds spent by a process tree between start and `seconds()` (processes born since included)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.start = self._times()

    def _times(self) -> dict[int, float]:
        import psutil

        times = {}
        for process in _tree(self.pid):
            with contextlib.suppress(psutil.Error):
                cpu = process.cpu_times()
                times[process.pid] = cpu.user + cpu.system
        return times

    def seconds(self) -> float:
        return sum(total - self.start.get(pid, 0.0) for pid, total in self._times().items())


def postgres(folder: Path) -> Any:
    """A connection to the server's PostgreSQL, as its MLflow user (pgpass), to the `postgres` database:
    it is not one of MLflow's connections to its own."""
    import psycopg

    state = json.loads((folder / "server.json").read_text())
    return psycopg.connect(
        host="127.0.0.1",
        port=state["db_port"],
        user="mlflow",
        dbname="postgres",
        passfile=str(folder / "pgpass"),
        autocommit=True,
        connect_timeout=30,
    )


def postgres_max_connections(folder: Path) -> int:
    with postgres(folder) as connection:
        return int(connection.execute("SHOW max_connections").fetchone()[0])


class Watch:
    """While clients log: PostgreSQL's connections to MLflow's database (every 0.25 s), and CPU time of
    the server's processes, the database's and the whole machine."""

    def __init__(self, folder: Path) -> None:
        import psutil

        state = json.loads((folder / "server.json").read_text())
        self.folder = folder
        postmaster = folder / "postgres" / "postmaster.pid"
        self.server = CpuTime(state["pid"])
        self.database = CpuTime(int(postmaster.read_text().split()[0]) if postmaster.is_file() else None)
        self.machine = psutil.cpu_times()
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        with postgres(self.folder) as connection:
            while not self._stop.wait(0.25):
                total, active = connection.execute(
                    "SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity "
                    "WHERE datname = 'mlflow'"
                ).fetchone()
                self.samples.append((total, active))

    def stop(self, wall: float) -> dict[str, Any]:
        import psutil

        self._stop.set()
        self._thread.join(timeout=10)
        now = psutil.cpu_times()
        busy = sum(now) - now.idle - now.iowait - (sum(self.machine) - self.machine.idle - self.machine.iowait)
        totals = [total for total, _ in self.samples] or [0]
        actives = [active for _, active in self.samples] or [0]
        return {
            "server_cpu_seconds": self.server.seconds(),
            "database_cpu_seconds": self.database.seconds(),
            "machine_busy_cores": busy / wall,  # of os.cpu_count(): other agents' work included
            "pg_connections_max": max(totals),
            "pg_active_max": max(actives),
            "pg_active_mean": sum(actives) / len(actives),
        }


class LogScan:
    """What a log gained since the last scan: HTTP statuses (uvicorn's access lines) and error lines."""

    STATUS = re.compile(r'HTTP/[\d.]+" (\d{3})\b')

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, path.stat().st_size if path.is_file() else 0

    def scan(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            text = handle.read().decode(errors="replace")
            self.offset = handle.tell()
        statuses: Counter[str] = Counter()
        found: Counter[str] = Counter()
        samples: list[str] = []
        for line in text.splitlines():
            status = self.STATUS.search(line)
            if status:
                statuses[status.group(1)] += 1
                if status.group(1) < "400":
                    continue  # a request answered: nothing to look for in it
            matched = [name for name, pattern in LOG_PATTERNS.items() if re.search(pattern, line, re.IGNORECASE)]
            found.update(matched)
            if (status or matched) and len(samples) < 5:
                samples.append(line[:300])
        return {"http_statuses": dict(statuses), "patterns": dict(found), "samples": samples}


# ---- One N: start the clients, wait, read everything back -------------------------------------


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p95, p99 in ms (nearest rank)."""
    if not seconds:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0}
    ordered = sorted(seconds)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000

    return {"p50_ms": rank(0.50), "p95_ms": rank(0.95), "p99_ms": rank(0.99)}


def check_run(client: Any, record: dict) -> dict[str, Any]:
    """One run as the server has it against what its client logged."""
    run_id = record["run_id"]
    run = client.get_run(run_id)
    problems: dict[str, Any] = {"lost": 0, "duplicated": 0, "unexpected": 0}
    keys = set(record["metrics"]) | set(record["uncertain"]) | set(run.data.metrics)
    for key in sorted(keys):
        got = Counter((m.step, m.value) for m in client.get_metric_history(run_id, key))
        want = Counter(tuple(pair) for pair in record["metrics"].get(key, []))
        maybe = Counter(tuple(pair) for pair in record["uncertain"].get(key, []))
        problems["lost"] += sum((want - got).values())
        for pair, count in got.items():
            # acknowledged: exactly as often as logged; from a call that failed: once at most (it may have landed)
            allowed = want[pair] or min(maybe[pair], 1)
            if allowed:
                problems["duplicated"] += max(0, count - allowed)
            else:
                problems["unexpected"] += count  # a value no client logged
    listed = {info.path for info in client.list_artifacts(run_id, "reports")}
    problems["artifacts_missing"] = len(set(record["artifacts"]) - listed)
    problems["abandoned"] = record["abandoned"]
    problems["not_finished"] = int(run.info.status != "FINISHED" and not record["abandoned"])
    problems["finish_acknowledged"] = record["finished"]
    problems["metric_values"] = sum(len(pairs) for pairs in record["metrics"].values())
    return problems


def verify(uri: str, env: dict[str, str], label: str, runs: list[dict]) -> dict[str, Any]:
    """Every run read back (4 threads, one client each), and the server searched for runs no client knows."""
    from mlflow import MlflowClient

    os.environ.update(env)
    local = threading.local()

    def one(record: dict) -> dict:
        if not hasattr(local, "client"):
            local.client = MlflowClient(uri)
        return check_run(local.client, record)

    with ThreadPoolExecutor(4) as pool:
        checked = list(pool.map(one, runs))
    client = MlflowClient(uri)
    ids = [client.get_experiment_by_name(name).experiment_id for name in DATASETS]
    found, token = set(), None
    while True:
        page = client.search_runs(ids, f"tags.bench_round = '{label}'", max_results=1000, page_token=token)
        found |= {run.info.run_id for run in page}
        token = page.token
        if not token:
            break
    known = {record["run_id"] for record in runs}
    total = {key: sum(c[key] for c in checked) for key in ("lost", "duplicated", "unexpected", "artifacts_missing")}
    return {
        **total,
        "runs_checked": len(checked),
        "metric_values_checked": sum(c["metric_values"] for c in checked),
        "not_finished": sum(c["not_finished"] for c in checked),
        "not_finished_unacknowledged": sum(c["not_finished"] and not c["finish_acknowledged"] for c in checked),
        "runs_abandoned": sum(c["abandoned"] for c in checked),  # cut short by the client's deadline
        "runs_on_server": len(found),
        "runs_orphaned": len(found - known),  # created on the server, unknown to their client (a retried create)
        "runs_missing": len(known - found),
    }


def _drain(results: Any) -> list[dict]:
    found = []
    with contextlib.suppress(Exception):  # queue.Empty: nothing more within a few seconds
        while True:
            found.append(results.get(timeout=5))
    return found


def measure(uri: str, folder: Path, env: dict[str, str], n: int, label: str, args: Any, params: dict) -> dict:
    ctx = multiprocessing.get_context("forkserver")
    barrier, results = ctx.Barrier(n + 1), ctx.Queue()
    scratch = Path(tempfile.mkdtemp(prefix="bench-load-clients-"))  # removed here: a killed client cannot
    clients = [
        ctx.Process(
            target=client_main,
            args=(uri, scratch / str(i), env, i, label, args.seconds, args.epochs, params, barrier, results),
            daemon=True,
        )
        for i in range(n)
    ]
    mlflow_log, postgres_log = LogScan(folder / "mlflow.log"), LogScan(folder / "postgres.log")
    say(f"{label}: starting {n} client(s)")
    for process in clients:
        process.start()
    try:
        try:
            barrier.wait(timeout=READY_TIMEOUT)
        except threading.BrokenBarrierError:
            crashed = [r.get("crashed", "") for r in _drain(results)]
            raise RuntimeError(f"{label}: a client failed before logging:\n{next(filter(None, crashed), '')}") from None
        watch = Watch(folder)
        say(f"{label}: {n} client(s) ready, logging for {args.seconds:.0f} s")
        reports = [results.get(timeout=ABANDON_AFTER * args.seconds + LATE) for _ in clients]
        watch_wall = max(r.get("ended", 0) for r in reports) - min(r["started"] for r in reports)
        watched = watch.stop(max(watch_wall, 1e-9))
    except BaseException:
        for process in clients:  # only the processes this round started
            process.kill()
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for process in clients:
        process.join(timeout=60)
    crashed = [r["crashed"] for r in reports if "crashed" in r]
    if crashed:
        raise RuntimeError(f"{label}: {len(crashed)} client(s) crashed; the first:\n{crashed[0]}")
    wall = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    by_kind: dict[str, list[float]] = defaultdict(list)
    for report in reports:
        for kind, seconds in report["seconds"].items():
            by_kind[kind].extend(seconds)
    every = [s for seconds in by_kind.values() for s in seconds]
    runs = [run_ for report in reports for run_ in report["runs"]]
    errors = sum(sum(r["errors"].values()) for r in reports)
    say(f"{label}: {len(every)} calls in {wall:.1f} s; reading back {len(runs)} runs")
    checked = verify(uri, env, label, runs)
    client_cpu = sum(r["cpu_seconds"] for r in reports)
    server_log = mlflow_log.scan()
    result = {
        "clients": n,
        "wall_seconds": wall,
        "runs": len(runs),
        "runs_not_created": sum(r["runs_not_created"] for r in reports),
        "calls": len(every),
        "calls_per_second": len(every) / wall,
        "calls_per_run": len(every) / max(len(runs), 1),
        **percentiles(every),
        "errors": errors,
        "errors_by_kind": dict(sum((Counter(r["errors"]) for r in reports), Counter())),
        "error_samples": [s for r in reports for s in r["error_samples"]][:10],
        "retries": sum(r["retries"] for r in reports),
        "by_kind": {kind: {"calls": len(s), **percentiles(s)} for kind, s in sorted(by_kind.items())},
        "verified": checked,
        "cpu_seconds_per_call_ms": {
            "server": 1000 * watched["server_cpu_seconds"] / max(len(every), 1),
            "database": 1000 * watched["database_cpu_seconds"] / max(len(every), 1),
            "clients": 1000 * client_cpu / max(len(every), 1),
        },
        "cores_busy": {
            "server": watched["server_cpu_seconds"] / wall,
            "database": watched["database_cpu_seconds"] / wall,
            "clients": client_cpu / wall,
            "machine": watched["machine_busy_cores"],
        },
        "pg_connections": {k.removeprefix("pg_"): v for k, v in watched.items() if k.startswith("pg_")},
        "server_log": server_log,
        "http_requests": sum(server_log.get("http_statuses", {}).values()),
        "postgres_log": postgres_log.scan(),
    }
    say(
        f"{label}: {result['calls_per_second']:.0f} calls/s, p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} "
        f"ms, p99 {result['p99_ms']:.1f} ms, {errors} errors, {checked['lost']} lost, {checked['duplicated']} "
        f"duplicated, {checked['not_finished']} not finished, {checked['artifacts_missing']} artifacts missing; "
        f"cores busy: server {result['cores_busy']['server']:.2f}, database {result['cores_busy']['database']:.2f}, "
        f"clients {result['cores_busy']['clients']:.2f}"
    )
    return result


def knee(rounds: list[dict], key: str) -> int | None:
    """The smallest N whose `key` latency is at least twice the smallest N's (None: no such N)."""
    ordered = sorted(rounds, key=lambda r: r["clients"])
    base = ordered[0][key]
    return next((r["clients"] for r in ordered[1:] if r[key] >= 2 * base), None)


def stage_params() -> dict[str, str]:
    """What train logs as params (flattened, as pipeline.tracking.client does) for LeNet-5 modern."""
    import yaml

    from pipeline.tracking.client import MAX_PARAM_LENGTH, flatten

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    tree = {
        "dataset": "mnist",
        "design": "lenet5_modern",
        "split_seed": raw["seed"],
        "train": raw["train"],
        "design_spec": raw["models"]["lenet5_modern"],
        "normalize": raw["normalize"],
        "builtin": "lenet5_modern",
        "device": "CPU: bench",
    }
    return {key: str(value)[:MAX_PARAM_LENGTH] for key, value in flatten(tree).items()}


def server_part(args: Any, save: Any) -> dict[str, Any]:
    """Every configuration's rounds; `save` gets the results so far after each configuration."""
    multiprocessing.set_forkserver_preload(["__main__", "mlflow", "mlflow.entities"])
    params = stage_params()
    configs: list[dict] = []
    result = {
        "clients": args.clients,
        "seconds_per_n": args.seconds,
        "epochs_per_run": args.epochs,
        "params_per_run": len(params) + 1,
        "configs": configs,
        "load_average": {"before": load()},
    }
    for text in args.config:
        config = parse_config(text)
        label = config_label(config)
        with tracking_server(config) as (uri, folder):
            env = {**CLIENT_HTTP, **credentials(folder)}
            os.environ.update(env)  # this process reads back and makes the experiments with the same login
            from mlflow import MlflowClient

            client = MlflowClient(uri)
            for dataset in DATASETS:  # as the first stage on a fresh server makes them
                client.create_experiment(dataset, tags={"dataset": dataset})
            limit = postgres_max_connections(folder)
            rounds = []
            for n in args.clients:
                rounds.append(measure(uri, folder, env, n, f"{label} N={n}", args, params))
        configs.append(
            {
                "config": config,
                "label": label,
                "postgres_max_connections": limit,
                "rounds": rounds,
                "knee_p50": knee(rounds, "p50_ms"),
                "knee_p95": knee(rounds, "p95_ms"),
            }
        )
        say(f"{label}: knee (p50 at least twice N={args.clients[0]}'s) at N={configs[-1]['knee_p50']}")
        result["load_average"]["after"] = load()
        save(result)
    return result


# ---- SQLite: four queued experiments, no server ----------------------------------------------


def _dvc(repo: Path, *arguments: str) -> str:
    """A dvc command's output (stdout and stderr), whatever its exit status."""
    done = subprocess.run(["dvc", *arguments], cwd=repo, env=tool_env(), capture_output=True, text=True)
    return done.stdout + done.stderr


def queue_status(repo: Path) -> dict[str, str]:
    """Experiment name -> status from `dvc queue status` (Queued, Running, Success, Failed)."""
    lines = _dvc(repo, "queue", "status").splitlines()
    statuses = {}
    for line in lines[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[-1] in ("Queued", "Running", "Success", "Failed"):
            statuses[fields[1]] = fields[-1]
    return statuses


def sqlite_queue(args: Any) -> dict[str, Any]:
    from mlflow import MlflowClient

    base = Path(tempfile.mkdtemp(prefix="bench-sqlite-queue-"))
    load_before = load()
    try:
        say("sqlite queue: a tiny copy of the project, its data stages built and committed")
        changes = {**tiny_params(write_mirror(base / "mirror")), "train.epochs": args.queue_epochs}
        repo = copy_project(base / "repo", changes)
        run(["dvc", "repro", "normalize"], repo)
        run(["git", "add", "-A"], repo)
        run(["git", "commit", "-qm", "data stages built"], repo)  # queued experiments start from here
        names = [f"load-bs{size}" for size in QUEUE_BATCH_SIZES]
        for name, size in zip(names, QUEUE_BATCH_SIZES):
            run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.batch_size={size}"], repo)
        say(f"sqlite queue: {len(names)} experiments queued; `dvc queue start -j 4`")
        started = time.monotonic()
        try:
            run(["dvc", "queue", "start", "-j", "4"], repo)
            # --follow returns when the experiment has ended, whatever its outcome: its status says which
            logs = {name: _dvc(repo, "queue", "logs", name, "--follow") for name in names}
            wall = time.monotonic() - started
            statuses = queue_status(repo)
        finally:
            _dvc(repo, "queue", "stop")
        say(f"sqlite queue: done after {wall:.0f} s; checking the logs and mlflow.db")
        found = {
            name: {
                "status": statuses.get(name, "unknown"),
                "database_is_locked": len(re.findall(r"database is locked", log, re.IGNORECASE)),
                "spooled": len(re.findall(r"warning: tracking:", log)),
                "tracebacks": len(re.findall(r"Traceback \(most recent call last\)", log)),
                "log_lines": len(log.splitlines()),  # what was searched: the stages' own output
            }
            for name, log in logs.items()
        }
        client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
        experiments = client.search_experiments()
        runs = client.search_runs([e.experiment_id for e in experiments], max_results=5000)
        epochs = list(range(1, args.queue_epochs + 1))
        design_runs: dict[str, int] = Counter()
        incomplete, not_evaluated = [], []
        for found_run in runs:
            tags = found_run.data.tags
            if "model" not in tags:
                continue
            design_runs[tags.get("dvc_experiment", "")] += 1
            if tags.get("stage") != "train+evaluate":
                not_evaluated.append(f"{tags.get('dvc_experiment')}/{tags['model']}: stage {tags.get('stage')}")
            for key in EPOCH_METRICS:
                steps = sorted(m.step for m in client.get_metric_history(found_run.info.run_id, key))
                if steps != epochs:
                    incomplete.append(f"{tags.get('dvc_experiment')}/{tags['model']}: {key} steps {steps}")
        designs = len(changes["experiments.models"])
        # How many runs were open at once, from their start and end times: the queue's runs overlapped
        events = sorted(
            (t, delta)
            for r in runs
            for t, delta in ((r.info.start_time, 1), (r.info.end_time or r.info.start_time, -1))
        )
        open_runs = concurrent = 0
        for _, delta in events:
            open_runs += delta
            concurrent = max(concurrent, open_runs)
        return {
            "experiments": names,
            "batch_sizes": list(QUEUE_BATCH_SIZES),
            "jobs": 4,
            "epochs": args.queue_epochs,
            "designs": designs,
            "wall_seconds": wall,
            "per_experiment": found,
            "all_succeeded": all(f["status"] == "Success" for f in found.values()),
            "database_is_locked": sum(f["database_is_locked"] for f in found.values()),
            "spooled": sum(f["spooled"] for f in found.values()),
            "mlflow_runs": len(runs),
            "mlflow_runs_open_at_once_max": concurrent,
            "mlflow_runs_not_finished": [
                f"{r.data.tags.get('dvc_experiment')}/{r.data.tags.get('stage')}/{r.data.tags.get('model', '')}: "
                f"{r.info.status}"
                for r in runs
                if r.info.status != "FINISHED"
            ],
            "design_runs_per_experiment": dict(design_runs),
            "design_runs_missing": [name for name in names if design_runs.get(name, 0) != designs],
            "runs_missing_epochs": incomplete,
            "design_runs_not_evaluated": not_evaluated,
            "load_average": {"before": load_before, "after": load()},
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---- Report --------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    lines = []
    server = result.get("server")
    if server:
        lines += [
            "| server | N | runs | calls/s | p50 ms | p95 ms | p99 ms | errors | retries | lost | duplicated | "
            "not FINISHED | abandoned | artifacts missing | cores busy: server / db / clients | PG connections max |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for config in server["configs"]:
            for r in config["rounds"]:
                v, busy = r["verified"], r["cores_busy"]
                lines.append(
                    f"| {config['label']} | {r['clients']} | {r['runs']} | {r['calls_per_second']:.0f} | "
                    f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {r['retries']} | "
                    f"{v['lost']} | {v['duplicated'] + v['unexpected'] + v['runs_orphaned']} | {v['not_finished']} | "
                    f"{v['runs_abandoned']} | "
                    f"{v['artifacts_missing']} | {busy['server']:.2f} / {busy['database']:.2f} / "
                    f"{busy['clients']:.2f} | {r['pg_connections']['connections_max']} |"
                )
        lines.append("")
        for config in server["configs"]:
            lines.append(
                f"- {config['label']}: the knee (the smallest N with at least twice N={server['clients'][0]}'s "
                f"latency) at N={config['knee_p50']} by p50, N={config['knee_p95']} by p95 (PostgreSQL "
                f"max_connections {config['postgres_max_connections']})"
            )
    queue = result.get("sqlite_queue")
    if queue:
        lines += [
            "",
            f"SQLite store, `dvc queue start -j {queue['jobs']}`, {len(queue['experiments'])} experiments "
            f"({queue['designs']} designs, {queue['epochs']} epochs each): {queue['wall_seconds']:.0f} s; all "
            f"succeeded: {queue['all_succeeded']}; 'database is locked': {queue['database_is_locked']}; runs "
            f"spooled: {queue['spooled']}; MLflow runs {queue['mlflow_runs']} (at most "
            f"{queue['mlflow_runs_open_at_once_max']} open at once), not FINISHED "
            f"{len(queue['mlflow_runs_not_finished'])}, design runs missing an epoch's metric "
            f"{len(queue['runs_missing_epochs'])}, experiments missing a design run "
            f"{len(queue['design_runs_missing'])}.",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,16,64", help="the N to measure, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long each N logs")
    parser.add_argument("--epochs", type=int, default=10, help="per-epoch metrics per run")
    parser.add_argument(
        "--config",
        action="append",
        help="a server configuration, workers=N[,pool_size=N][,max_overflow=N]; repeat for several "
        f"(default: {', '.join(DEFAULT_CONFIGS)})",
    )
    parser.add_argument("--server", action="store_true", help="only the server part")
    parser.add_argument("--sqlite-queue", action="store_true", help="only the SQLite queue part")
    parser.add_argument("--queue-epochs", type=int, default=2)
    args = parser.parse_args()
    args.clients = sorted(int(n) for n in args.clients.split(","))
    args.config = args.config or list(DEFAULT_CONFIGS)
    both = not (args.server or args.sqlite_queue)
    previous = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    result: dict[str, Any] = {
        "benchmark": "tracking server under concurrent clients; SQLite store under a DVC queue",
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": machine(),
        "command": " ".join(["bench/bench_server_load.py", *sys.argv[1:]]),
        "load_average": {"before": load()},
    }
    if both or args.server:
        result["server"] = server_part(args, lambda server: write_result(RESULT, {**result, "server": server}))
    elif "server" in previous:
        result["server"] = previous["server"]
    if both or args.sqlite_queue:
        result["sqlite_queue"] = sqlite_queue(args)
    elif "sqlite_queue" in previous:
        result["sqlite_queue"] = previous["sqlite_queue"]
    result["load_average"]["after"] = load()
    write_result(RESULT, result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
