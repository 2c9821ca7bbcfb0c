"""A tracking server: checked before a stage works, started and stopped as `make server` does, and a run
whose server goes away mid-stage kept in the spool, then logged by `make resync` when it is back.

The PostgreSQL-backed server and the pipeline against it are in test_several_machines.py; here the
lighter SQLite-backed server stands for it (the client side is the same HTTP API).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
import requests

from pipeline import tracking
from pipeline.config import load_params
from pipeline.tracking import client as tracking_client
from pipeline.tracking import server, spool
from pipeline.tracking.server import free_port
from tests.conftest import REPO, tool_env
from tests.test_tracking import model_folder

PARAMS = load_params(REPO / "params.yaml")


# ---- The pre-flight check, against stand-in servers -----------------------------------------------


class StandIn(http.server.BaseHTTPRequestHandler):
    """Answers as its server's `answer(method, path, headers)` says, with (status, body)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        status, body = self.server.answer(self.command, self.path, dict(self.headers))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def stand_in_server(answer: Callable[[str, str, dict[str, str]], tuple[int, bytes]]) -> Iterator[str]:
    """A stand-in for a tracking server on loopback, answering as `answer(method, path, headers)` says;
    yields its URI."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    server.answer = answer
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def answers_the_check_only(method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """A server that passes the stage's check, then fails every request of the run (as one that went away)."""
    if method == "GET" and path.startswith("/api/2.0/mlflow/experiments/search"):
        return 200, b'{"experiments": []}'
    return 503, b""


@pytest.fixture
def stand_in() -> Iterator[Callable[[int, bytes], str]]:
    """`stand_in(status, body)`: the URI of a stand-in server answering every request so."""
    with contextlib.ExitStack() as servers:
        yield lambda status, body=b'{"experiments": []}': servers.enter_context(
            stand_in_server(lambda method, path, headers: (status, body))
        )


def test_a_server_that_answers_passes_and_gets_the_users_credentials(monkeypatch, tmp_path: Path) -> None:
    seen = []
    (tmp_path / ".mlflow").mkdir()  # where MLflow's client reads a login the variables do not give
    (tmp_path / ".mlflow" / "credentials").write_text(
        "[mlflow]\nmlflow_tracking_username = bea\nmlflow_tracking_password = s3cret\n"
    )
    monkeypatch.setenv("HOME", str(tmp_path))

    def answer(method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        seen.append(headers.get("Authorization"))
        return 200, b'{"experiments": []}'

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ada")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.delenv("PIPELINE_TRACKING", raising=False)
    with stand_in_server(answer) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        tracking.check_server()
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
        tracking.check_server()
        monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        tracking.check_server()
    assert seen == ["Basic YWRhOnNlY3JldA==", "Bearer t0ken", "Basic YmVhOnMzY3JldA=="]  # as MLflow's client sends them


@pytest.mark.parametrize(
    "status, body, expected",
    [
        (
            401,
            b"",
            "it asks for a login (HTTP 401 Unauthorized); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
            "(or ~/.mlflow/credentials, or MLFLOW_TRACKING_TOKEN) to a user of that server (its admin adds one with "
            "`make server-user NAME=...`)",
        ),
        (503, b"", "the server answers but fails (HTTP 503 Service Unavailable); check its log and its database"),
        (404, b"", "no MLflow tracking server answers there (HTTP 404 Not Found); check the URI"),
        (200, b"<html>a web page</html>", "something answers, but not as an MLflow tracking server"),
    ],
)
def test_a_refusing_failing_or_foreign_server_is_named_with_what_to_check(
    stand_in, monkeypatch, tmp_path, status, body, expected
) -> None:
    uri = stand_in(status, body)
    monkeypatch.setenv("HOME", str(tmp_path))  # no saved login
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("PIPELINE_TRACKING", raising=False)
    with pytest.raises(tracking.TrackingServerError) as raised:
        tracking.check_server()
    assert str(raised.value).startswith(f"MLFLOW_TRACKING_URI={uri}: {expected}")
    assert str(raised.value).endswith("or set PIPELINE_TRACKING=off to run without tracking")


def test_the_local_store_and_tracking_off_are_not_checked(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.check_server()  # sqlite:///…/mlflow.db: nothing to reach
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("PIPELINE_TRACKING", "off")
    tracking.check_server()
    monkeypatch.delenv("PIPELINE_TRACKING")
    for uri in ("sqlite:///elsewhere/mlflow.db", "postgresql+psycopg://u@127.0.0.1/db", "file:///tmp/mlruns", "/tmp/x"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        tracking.check_server()  # stores MLflow knows, nothing to reach first


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://127.0.0.1:{port}", "no server answers ("),
        ("notascheme://x", "MLflow has no tracking store for 'notascheme://'; use http(s)://host:port"),
    ],
    ids=["server down", "unknown scheme"],
)
def test_a_stage_whose_store_is_unusable_stops_before_any_work_with_one_line(
    tmp_path: Path, uri: str, expected: str
) -> None:
    """`python -m pipeline download mnist` as dvc repro runs it: exit status 2, the URI and what to do, no output."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    uri = uri.format(port=free_port())
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "download", "mnist"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=tool_env(MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(REPO)),
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: MLFLOW_TRACKING_URI={uri}: {expected}")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "data").exists()


def test_a_gone_server_is_told_apart_from_a_refused_request() -> None:
    """What the worker keeps in the spool (the server went away) and what it shows as an error (a bug)."""
    from mlflow.exceptions import MlflowException, RestException

    def wrapped(cause: Exception) -> MlflowException:
        try:
            try:
                raise cause
            except Exception as error:
                raise MlflowException(f"API request failed with exception {error}") from error  # as MLflow wraps it
        except MlflowException as error:
            return error

    assert spool.server_unreachable(wrapped(requests.ConnectionError("refused")))
    assert spool.server_unreachable(wrapped(requests.exceptions.RetryError("too many 503 error responses")))
    assert spool.server_unreachable(wrapped(requests.ReadTimeout("read timed out")))
    assert not spool.server_unreachable(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "no"}))
    assert not spool.server_unreachable(wrapped(ValueError("a bug")))


# ---- `make server` with the SQLite backend, and the spool ---------------------------------------------


def server_cli(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "server", *map(str, args)],
        cwd=REPO,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"pipeline.tracking.server {' '.join(map(str, args))} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """`make server SERVER_BACKEND=sqlite` in a temporary folder, on a free port; stopped after, also on failure."""
    folder, port = tmp_path_factory.mktemp("sqlite-server"), free_port()
    try:
        server_cli(
            "start", "--dir", folder, "--backend", "sqlite", "--port", port, "--no-auth"
        )  # logins: test_server_auth
        yield folder, port
    finally:
        server_cli("stop", "--dir", folder, check=False)


@pytest.mark.e2e  # a real mlflow server: not for `make test-fast`
def test_the_server_starts_says_what_runs_and_proxies_artifacts(sqlite_server) -> None:
    folder, port = sqlite_server
    status = server_cli("status", "--dir", folder)
    assert f"MLflow tracking server http://127.0.0.1:{port}: answers" in status.stdout
    assert f"backend store: sqlite:///{folder.resolve() / 'mlflow.db'}" in status.stdout
    client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
    experiment = client.get_experiment(client.create_experiment("proxied"))
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), "clients would need the server's disk"
    again = server_cli("start", "--dir", folder, "--backend", "sqlite", "--port", port, "--no-auth")  # twice
    assert "already running" in again.stdout


def tiny_model(folder: Path) -> Path:
    """A model folder as train leaves it, which evaluate logs."""
    import keras

    return model_folder(
        folder, keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]), (4, 4, 1)
    )


@pytest.mark.e2e  # a real mlflow server: not for `make test-fast`
def test_a_run_whose_server_goes_away_is_kept_and_resync_logs_it_when_it_is_back(
    sqlite_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    folder, port = sqlite_server
    uri = f"http://127.0.0.1:{port}"
    env = {"DVC_ROOT": str(tmp_path), "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PIPELINE_TRACKING", raising=False)
    monkeypatch.setattr(tracking_client, "_worker", None)  # a worker of this environment (its spool is in tmp_path)
    summary = tmp_path / "summary.txt"
    summary.write_text("as trained\n")
    model = tiny_model(tmp_path / "trained")

    with tracking.stage_run(PARAMS, "mnist", "train", model="tiny", seed=7) as run:
        tracking.log_params({"train": {"epochs": 2}})
        tracking.log_metrics({"val_accuracy": 0.5}, step=1)
        train_id = run.id
        client = mlflow.MlflowClient(uri)
        deadline = time.monotonic() + 60
        while not client.get_metric_history(train_id, "val_accuracy") and time.monotonic() < deadline:
            time.sleep(0.2)  # the worker logs in the background: wait until step 1 is on the server
        server_cli("stop", "--dir", folder)  # ...then the server goes away mid-stage
        tracking.log_metrics({"val_accuracy": 0.75}, step=2)
        tracking.log_artifact(summary, "reports")
    assert "this run is kept in" in capfd.readouterr().err  # the stage went on, warned
    with tracking.stage_run(PARAMS, "mnist", "evaluate", model="tiny", run_id=train_id, seed=7) as evaluation:
        tracking.log_model(model, {"test_accuracy": 0.625})
        evaluation_id = evaluation.id
    assert evaluation_id.startswith(spool.LOCAL_ID_PREFIX)  # it never reached the server: a local id
    kept = spool.entries()
    assert [(entry.run_id, entry.done, len(entry.requests), entry.status) for entry in kept] == [
        (train_id, 2, 4, "FINISHED"),
        (None, 0, 1, "FINISHED"),
    ]
    summary.write_text("replaced by a later run\n")  # the kept copy is what resync logs

    server_cli("start", "--dir", folder, "--backend", "sqlite", "--port", port, "--no-auth")
    resync = subprocess.run(
        [sys.executable, "-m", "pipeline", "resync"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=tool_env(**env, PYTHONPATH=str(REPO)),
        timeout=600,
    )
    assert resync.returncode == 0, resync.stderr
    assert "resync: 2 of 2 kept runs logged" in resync.stdout
    assert spool.entries() == [] and spool.resolved(evaluation_id) == train_id

    found = client.get_run(train_id)  # one run, as if the server had never gone away
    assert found.info.status == "FINISHED" and found.data.tags["stage"] == "train+evaluate"
    assert [(m.step, m.value) for m in client.get_metric_history(train_id, "val_accuracy")] == [(1, 0.5), (2, 0.75)]
    assert found.data.params["train.epochs"] == "2" and found.data.metrics["test_accuracy"] == 0.625
    copy = mlflow.artifacts.download_artifacts(
        run_id=train_id, artifact_path="reports/summary.txt", tracking_uri=uri, dst_path=str(tmp_path / "downloaded")
    )
    assert Path(copy).read_text() == "as trained\n"
    (logged,) = client.search_logged_models([found.info.experiment_id])
    assert logged.source_run_id == train_id and {m.key: m.value for m in logged.metrics}["test_accuracy"] == 0.625


@pytest.mark.skipif(os.geteuid() != 0 or server.postgres_bin() is None, reason="as root, with PostgreSQL installed")
def test_as_root_a_folder_the_postgres_user_cannot_reach_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """pytest's temporary folders are under /tmp/pytest-of-root (0700), as a folder under /root would be."""
    result = server_cli("start", "--dir", tmp_path / "server", "--port", free_port(), check=False)
    assert result.returncode == 2
    assert "the `postgres` user, who runs PostgreSQL for root, cannot reach this folder" in result.stderr
    assert "`make server SERVER_DIR=/var/tmp/mlflow-server`" in result.stderr


def test_two_installs_of_postgresql_at_once_run_apt_get_once_and_both_find_it(monkeypatch, tmp_path: Path) -> None:
    """Test files side by side (or two `make server`) that each install PostgreSQL: apt-get's lock would fail one."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where the install's lock file goes
    installed: list[Path] = []
    apt_runs: list[int] = []

    def apt_install() -> Path:
        apt_runs.append(1)
        time.sleep(0.5)  # long enough for the other caller to arrive while this one installs
        installed.append(Path("/usr/lib/postgresql/15/bin"))
        return installed[0]

    monkeypatch.setattr(server, "postgres_bin", lambda: installed[0] if installed else None)
    monkeypatch.setattr(server, "_apt_install_postgresql", apt_install)
    found: list[Path] = []
    callers = [threading.Thread(target=lambda: found.append(server.install_postgresql())) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(apt_runs) == 1 and found == [Path("/usr/lib/postgresql/15/bin")] * 2
