"""Faults survived, nothing lost: real train stages meet a database that stops and comes back, a full disk,
a damaged checkpoint, and a file damaged on the DVC remote.

- The tracking server's PostgreSQL stops mid-training and starts again: the stage ends as usual, and after
  `resync` the server holds every epoch's metrics, as the stage's history file does, each once: also the one
  request the database took but whose answer was lost, which resync sends again.
- A write finds no room (the file-size limit, as a full disk would): one `error:` line, exit status 2, no
  half-written file, and the checkpoint before it resumes.
- A damaged checkpoint (cut short, or garbage) is said in one warning line and never resumed.
- A file damaged on the DVC remote: what DVC does (nothing, unless the remote verifies), what the pipeline does
  when it reads it, and the repair docs/several-machines.md describes.
"""

from __future__ import annotations

import configparser
import contextlib
import csv
import errno
import hashlib
import http.server
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import requests

from pipeline import tracking
from pipeline.config import load_params
from pipeline.core import files
from pipeline.core.errors import NoSpaceError
from pipeline.core.paths import RunPaths
from pipeline.tracking import client as tracking_client
from pipeline.tracking import server, spool
from pipeline.tracking.server import ServerFolder, free_port
from tests.conftest import REPO, copy_project, edit_params, run, tool_env, write_idx_dataset
from tests.test_tracking_server import server_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

DESIGN = "student_b"  # its model.keras, 2 MB with the optimizer state, is the largest file train writes
SEED = 42
STAGE = f"train@mnist-{DESIGN}-{SEED}"
OUT = RunPaths("mnist", DESIGN, SEED)
CHECKPOINT = Path(".checkpoints/mnist") / DESIGN / f"seed_{SEED}"
UNTRACKED = {"PIPELINE_TRACKING": "off"}  # where tracking is not what a test is about


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project with tiny MNIST normalized; epochs of about a second (3000 images, batches of 8)."""
    base = tmp_path_factory.mktemp("faults")
    md5s = write_idx_dataset(base / "mirror" / "mnist", train=3000, test=100)
    (base / "mirror" / "MD5SUMS").write_text("".join(f"{md5}  mnist/{name}\n" for name, md5 in md5s.items()))
    repo = copy_project(
        base / "repo",
        {
            "download.mirror": str(base / "mirror"),
            "train.batch_size": 8,
            "experiments.datasets": ["mnist"],
            "experiments.models": [DESIGN],
        },
    )
    run(["dvc", "repro", "normalize@mnist"], repo)
    return repo


def fresh(repo: Path, epochs: int) -> None:
    """`train.epochs: epochs`, and no checkpoint or train output left by an earlier test."""
    edit_params(repo / "params.yaml", {"train.epochs": epochs})
    for path in (repo / ".checkpoints", repo / OUT.model_dir, repo / OUT.metrics_dir):
        shutil.rmtree(path, ignore_errors=True)
    (repo / OUT.history).unlink(missing_ok=True)


def train_command() -> list[str]:
    return [sys.executable, "-m", "pipeline", "train", "mnist", DESIGN]


def train(repo: Path, preexec_fn: Callable[[], None] | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        train_command(),
        cwd=repo,
        env=tool_env(**UNTRACKED, **env),
        capture_output=True,
        text=True,
        preexec_fn=preexec_fn,
        timeout=600,
    )


def interrupt_after_epoch(repo: Path, epoch: int) -> None:
    """Start the train stage and SIGTERM it once it logged `epoch <epoch>/N`: a checkpoint of that epoch stays."""
    process = subprocess.Popen(train_command(), cwd=repo, env=tool_env(**UNTRACKED), stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if f": epoch {epoch}/" in line:
            process.send_signal(signal.SIGTERM)
            break
    process.stderr.read()
    assert process.wait(timeout=120) != 0, "the stage finished before it could be interrupted"
    state = json.loads((repo / CHECKPOINT / "state.json").read_text())
    assert state["epochs_done"] == epoch


def epochs_logged(log: str) -> list[str]:
    return [line.split(": epoch ")[1].split()[0] for line in log.splitlines() if ": epoch " in line]


def history(repo: Path) -> list[dict[str, str]]:
    with open(repo / OUT.history, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def digests(folder: Path) -> dict[str, str]:
    """Every file under `folder`, hidden ones included, with the MD5 of its bytes."""
    return {str(p.relative_to(folder)): files.md5_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The stage's one `error:` line (exit status 2, no traceback)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]


# ---- 1. The tracking server's PostgreSQL stops and starts again mid-training -------------------------------


@dataclass
class PostgresServer:
    folder: ServerFolder
    uri: str
    credentials: dict[str, str]  # MLFLOW_TRACKING_USERNAME and _PASSWORD if the server asks for a login

    @property
    def env(self) -> dict[str, str]:
        """What a stage needs to log there."""
        return {"MLFLOW_TRACKING_URI": self.uri, **self.credentials}

    @contextlib.contextmanager
    def client(self) -> Iterator[mlflow.MlflowClient]:
        with spool.environment(self.credentials):  # MLflow's client reads them from the environment
            yield mlflow.MlflowClient(self.uri)

    def stop_database(self) -> None:
        self.folder.cluster().stop()

    def start_database(self) -> None:
        self.folder.cluster().start(self.folder.state()["db_port"])  # the port the MLflow server's store names


def stage_credentials(folder: Path) -> dict[str, str]:
    """The login a server that asks for one wrote at its start (admin.credentials), as a stage's env."""
    path = folder / "admin.credentials"
    if not path.is_file():
        return {}
    ini = configparser.ConfigParser()
    ini.read(path)
    return {
        "MLFLOW_TRACKING_USERNAME": ini["mlflow"]["mlflow_tracking_username"],
        "MLFLOW_TRACKING_PASSWORD": ini["mlflow"]["mlflow_tracking_password"],
    }


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    """`python -m pipeline server start` (PostgreSQL) in a folder the cluster's owner can reach, on a free port."""
    if server.postgres_bin() is None:
        try:
            server.install_postgresql()
        except server.ServerError as error:
            pytest.skip(f"PostgreSQL is not installed and cannot be installed here: {error}")
    folder = Path(tempfile.mkdtemp(prefix="pipeline-faults-server-"))  # as root, the `postgres` user runs the
    folder.chmod(0o755)  # cluster: not under pytest's 0700 folders
    port = free_port()
    try:
        server_cli("start", "--dir", folder, "--port", port)
        yield PostgresServer(ServerFolder(folder), f"http://127.0.0.1:{port}", stage_credentials(folder))
    finally:
        server_cli("stop", "--dir", folder, check=False)
        shutil.rmtree(folder, ignore_errors=True)


OUTAGES = {
    # PostgreSQL back in 2 s: the MLflow server answers 503 meanwhile, and the client's retries (about 6 s of
    # them, the worker's settings) may carry the requests over it.
    "back within the client's retries": lambda line: False,
    # Down until the tracking worker gives up on the server and keeps the run in the spool.
    "down until the run is spooled": lambda line: "this run is kept in" in line,
}


@pytest.mark.parametrize("outage", OUTAGES)
def test_postgresql_stopped_and_restarted_mid_training_loses_no_metric(
    project: Path, postgres_server: PostgresServer, outage: str
) -> None:
    fresh(project, epochs=12)
    back_when = OUTAGES[outage]
    started = time.monotonic()
    process = subprocess.Popen(
        ["dvc", "repro", "--force", "--single-item", STAGE],
        cwd=project,
        env=tool_env(**postgres_server.env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log, stopped_at, restarted_at = [], None, None
    for line in process.stdout:
        log.append(line)
        if stopped_at is None and ": epoch 2/12 " in line:
            postgres_server.stop_database()
            stopped_at = time.monotonic() - started
            if outage == "back within the client's retries":
                time.sleep(2)
                postgres_server.start_database()
                restarted_at = time.monotonic() - started
        elif stopped_at is not None and restarted_at is None and back_when(line):
            postgres_server.start_database()
            restarted_at = time.monotonic() - started
    process.wait(timeout=600)
    if restarted_at is None:  # never restarted: restart it for the tests after this one, then fail
        postgres_server.start_database()
    output = "".join(log)
    assert stopped_at is not None and restarted_at is not None, output
    assert process.returncode == 0, output
    assert epochs_logged(output)[-1] == "12/12"
    spooled = "this run is kept in" in output
    if outage == "down until the run is spooled":
        assert spooled, output
    assert (project / OUT.model_dir / "model.keras").is_file() and (project / OUT.history).is_file()
    assert "up to date" in run(["dvc", "status", STAGE], project).stdout  # DVC recorded its outputs

    resync = subprocess.run(
        [sys.executable, "-m", "pipeline", "resync"],
        cwd=project,
        env=tool_env(**postgres_server.env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resync.returncode == 0, resync.stdout + resync.stderr
    assert ("resync: 1 of 1 kept runs logged" if spooled else "resync: no runs kept") in resync.stdout

    run_id = json.loads((project / OUT.model_dir / "run.json").read_text())["run_id"]
    rows = history(project)
    assert [row["epoch"] for row in rows] == [str(e) for e in range(1, 13)]
    with postgres_server.client() as client:
        found = client.get_run(run_id)
        assert found.info.status == "FINISHED"
        for column in rows[0]:
            if column == "epoch":
                continue
            key = "epoch_seconds" if column == "seconds" else column
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            assert logged == [(int(row["epoch"]), float(row[column])) for row in rows], f"{key}: lost or logged twice"
    train_json = json.loads((project / OUT.metrics_dir / "train.json").read_text())
    assert {key: found.data.metrics[key] for key in train_json} == pytest.approx(train_json)
    print(
        f"\n{outage}: PostgreSQL stopped at {stopped_at:.1f} s, started again at {restarted_at:.1f} s; "
        f"{'spooled, then resynced' if spooled else 'nothing spooled'}; 12 epochs x {len(rows[0]) - 1} metrics "
        f"on the server"
    )


class Forwarding(http.server.BaseHTTPRequestHandler):
    """Forwards every request to its server's `upstream`; the answer to a request `lose(path, body)` picks is
    lost on the way back: 503 instead, though the upstream server has done what it asked."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        answer = requests.request(self.command, self.server.upstream + self.path, data=body, headers=headers)
        status, content = (503, b"") if self.server.lose(self.path, body) else (answer.status_code, answer.content)
        self.send_response(status)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, *args: object) -> None:
        pass


def test_a_metric_whose_answer_was_lost_is_stored_once_after_resync(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ambiguous request: the database took it, the answer never came back (PostgreSQL stopping after its
    commit, a connection cut), so the worker keeps it in the spool and resync sends it again."""
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forwarding)
    proxy.upstream = postgres_server.uri
    proxy.lose = lambda path, body: path.startswith("/api/2.0/mlflow/runs/log-batch") and b"val_accuracy" in body
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    env = {
        "DVC_ROOT": str(tmp_path),  # the spool goes there
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{proxy.server_address[1]}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        **postgres_server.credentials,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PIPELINE_TRACKING", raising=False)
    monkeypatch.setattr(tracking_client, "_worker", None)  # a worker of this environment
    try:
        with tracking.stage_run(load_params(REPO / "params.yaml"), "mnist", "train", model="lost", seed=7) as run:
            tracking.log_metrics({"val_accuracy": 0.5}, step=1)
            run_id = run.id
    finally:
        proxy.shutdown()
        proxy.server_close()
    (kept,) = spool.entries()
    assert (kept.run_id, kept.done, len(kept.requests)) == (run_id, 0, 1)  # the worker took it as not logged

    resync = subprocess.run(
        [sys.executable, "-m", "pipeline", "resync", "--to", postgres_server.uri],
        cwd=tmp_path,
        env=tool_env(**{**env, "PYTHONPATH": str(REPO)}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resync.returncode == 0, resync.stdout + resync.stderr
    with postgres_server.client() as client:
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_accuracy")] == [(1, 0.5)]
        assert client.get_run(run_id).info.status == "FINISHED"


# ---- 2. No room to write: the file-size limit (as a full disk) ------------------------------------------------


def file_size_limit(limit: int) -> Callable[[], None]:
    """A preexec_fn: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored, so they fail rather than kill)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_no_room_for_a_checkpoint_stops_in_one_line_and_keeps_the_one_before(project: Path) -> None:
    fresh(project, epochs=3)
    interrupt_after_epoch(project, 1)
    kept = digests(project / CHECKPOINT.parent)
    limit = (project / CHECKPOINT / "model.keras").stat().st_size // 2  # epoch 2's checkpoint cannot be written

    result = train(project, preexec_fn=file_size_limit(limit))
    error = one_error_line(result)
    assert error.startswith(f"error: {project / CHECKPOINT / 'model.keras'}: cannot be written, the file outgrew")
    assert "file-size limit" in error and "ulimit -f unlimited" in error
    assert "epoch 2/3" not in result.stderr  # the epoch is logged once its checkpoint is saved
    assert digests(project / CHECKPOINT.parent) == kept, "the checkpoint changed, or a temporary file stayed"

    resumed = train(project)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {DESIGN} on mnist after epoch 1 of 3" in resumed.stderr
    assert epochs_logged(resumed.stderr) == ["2/3", "3/3"]
    assert [row["epoch"] for row in history(project)] == ["1", "2", "3"]


def test_no_room_for_the_model_leaves_no_half_model_and_the_checkpoint_resumes(project: Path) -> None:
    fresh(project, epochs=2)
    interrupt_after_epoch(project, 1)
    kept = digests(project / CHECKPOINT)
    limit = (project / CHECKPOINT / "model.keras").stat().st_size // 2  # the last epoch saves no checkpoint

    result = train(project, preexec_fn=file_size_limit(limit))
    error = one_error_line(result)
    assert error.startswith(f"error: {OUT.model_dir / 'model.keras'}: cannot be written, the file outgrew")
    assert epochs_logged(result.stderr) == ["2/2"]
    assert list((project / OUT.model_dir.parent).iterdir()) == [], "a half-written model or temporary folder"
    assert not (project / OUT.history).exists() and not (project / OUT.metrics_dir).exists()
    assert digests(project / CHECKPOINT) == kept

    resumed = train(project)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {DESIGN} on mnist after epoch 1 of 2" in resumed.stderr
    assert (project / OUT.model_dir / "model.keras").is_file() and not (project / CHECKPOINT).exists()


def test_a_full_disk_names_the_file_and_says_to_free_space(tmp_path: Path) -> None:
    """ENOSPC for real: /dev/full fails every write with it."""
    target = tmp_path / "out"
    with pytest.raises(NoSpaceError) as raised, files.atomic_directory(target) as tmp:
        (tmp / "small.txt").write_text("fits\n")
        with open("/dev/full", "w") as full:
            full.write("does not fit")
            full.flush()
    assert raised.value.code == errno.ENOSPC
    assert str(raised.value).startswith(f"{target}: cannot be written, the disk is full (")
    assert "free disk space, then run again" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


# ---- 3. A damaged checkpoint -----------------------------------------------------------------------------------


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))  # same size: only the bytes say it is not the file


DAMAGE = {
    "model cut short": ("model.keras", cut_short),
    "model garbage": ("model.keras", garbage),
    "state cut short": ("state.json", cut_short),
    "random states garbage": ("random.npz", garbage),
}


@pytest.fixture(scope="module")
def checkpoint_of_epoch_1(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkpoint an interruption after epoch 1 of 2 leaves."""
    fresh(project, epochs=2)
    interrupt_after_epoch(project, 1)
    copy = tmp_path_factory.mktemp("checkpoint") / "seed_42"
    shutil.copytree(project / CHECKPOINT, copy)
    return copy


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_said_in_one_warning_and_training_starts_over(
    project: Path, checkpoint_of_epoch_1: Path, damage: str
) -> None:
    fresh(project, epochs=2)
    shutil.copytree(checkpoint_of_epoch_1, project / CHECKPOINT)
    name, spoil = DAMAGE[damage]
    spoil(project / CHECKPOINT / name)

    result = train(project)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "resuming" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "the checkpoint is damaged" in line]
    assert len(warnings) == 1, result.stderr
    assert f"{project / CHECKPOINT}: the checkpoint is damaged, {name} " in warnings[0]
    assert warnings[0].endswith("it is removed and training starts from epoch 1")
    assert epochs_logged(result.stderr) == ["1/2", "2/2"]
    assert (project / OUT.model_dir / "model.keras").is_file() and not (project / CHECKPOINT).exists()


# ---- 4. A file damaged on the DVC remote --------------------------------------------------------------------


def test_a_file_damaged_on_the_dvc_remote_is_caught_by_a_verifying_pull_or_by_the_stage_that_reads_it(
    tmp_path: Path,
) -> None:
    """DVC trusts a remote's files by their names unless the remote has `verify = true`; the repair is a good
    copy put over the damaged one (docs/several-machines.md, "A damaged file on the DVC remote")."""
    md5s = write_idx_dataset(tmp_path / "mirror" / "mnist", train=300, test=50)
    (tmp_path / "mirror" / "MD5SUMS").write_text("".join(f"{md5}  mnist/{name}\n" for name, md5 in md5s.items()))
    first = copy_project(
        tmp_path / "first",
        {"download.mirror": str(tmp_path / "mirror"), "experiments.datasets": ["mnist"]},
    )
    run(["dvc", "repro", "normalize@mnist"], first)
    remote = tmp_path / "nas"
    run(["dvc", "remote", "add", "-d", "nas", str(remote)], first)
    run(["git", "add", "-A"], first)
    run(["git", "commit", "-qm", "data"], first)
    run(["dvc", "push"], first)
    data_stages = ["download@mnist", "split@mnist", "normalize@mnist"]

    damaged_file = Path("data/normalized/mnist/train.npz")
    good = (first / damaged_file).read_bytes()
    md5 = hashlib.md5(good).hexdigest()
    listed = run(["dvc", "ls", "--show-hash", ".", str(damaged_file.parent)], first).stdout
    assert f"{md5}  {damaged_file.name}" in listed  # how a user finds a file's object
    obj = Path("files/md5") / md5[:2] / md5[2:]
    spoiled = bytearray(good)
    spoiled[len(good) // 2 : len(good) // 2 + 16] = b"\xff" * 16  # 16 bytes rot in the middle of the images
    (remote / obj).chmod(0o644)
    (remote / obj).write_bytes(bytes(spoiled))

    def clone(name: str, *config: str) -> Path:
        target = tmp_path / name
        run(["git", "clone", "-q", str(first), str(target)], tmp_path)
        if config:
            run(["dvc", "remote", "modify", "nas", *config], target)
        return target

    # DVC's default: the damaged copy is pulled, cached under the good name, and `dvc status` sees nothing ...
    trusting = clone("trusting")
    run(["dvc", "pull", *data_stages], trusting)
    assert (trusting / damaged_file).read_bytes() == bytes(spoiled)
    assert (trusting / ".dvc/cache" / obj).read_bytes() == bytes(spoiled)
    assert "Data and pipelines are up to date" in run(["dvc", "status", *data_stages], trusting).stdout
    # ... and the first stage that reads it stops, naming it
    stage = subprocess.run(
        train_command(), cwd=trusting, env=tool_env(**UNTRACKED), capture_output=True, text=True, timeout=600
    )
    error = one_error_line(stage)
    assert error.startswith(f"error: {damaged_file}: damaged (Bad CRC-32 for file 'x.npy'); delete it and run")

    # A remote with `verify = true`: the pull hashes what it downloads, drops the damaged copy and fails, naming it
    verifying = clone("verifying", "verify", "true")
    pulled = subprocess.run(
        ["dvc", "pull", "-v", *data_stages], cwd=verifying, env=tool_env(), capture_output=True, text=True
    )
    said = pulled.stdout + pulled.stderr
    assert pulled.returncode == 1, said
    assert f"Checkout failed for following targets:\n{damaged_file.parent}\n" in said
    assert f"corrupted cache file '{verifying / '.dvc/cache' / obj}'" in said  # -v names the object
    assert not (verifying / damaged_file.parent).exists() and not (verifying / ".dvc/cache" / obj).exists()
    assert (verifying / "data/split/mnist/train.npz").is_file()  # the intact outputs are there

    # The repair: the pushing machine's cache holds the good copy; put it over the remote's damaged one
    assert files.md5_of(first / ".dvc/cache" / obj) == md5
    (remote / obj).write_bytes((first / ".dvc/cache" / obj).read_bytes())
    run(["dvc", "pull", *data_stages], verifying)
    assert (verifying / damaged_file).read_bytes() == good
    # ...and a machine that pulled the damaged copy drops it from its cache and workspace, then pulls again
    (trusting / ".dvc/cache" / obj).unlink()
    (trusting / damaged_file).unlink()
    run(["dvc", "pull", *data_stages], trusting)
    assert (trusting / damaged_file).read_bytes() == good
    assert "Data and pipelines are up to date" in run(["dvc", "status", *data_stages], trusting).stdout
