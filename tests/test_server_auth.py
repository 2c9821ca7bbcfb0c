"""Logins and permissions on the tracking server, against a real `mlflow server --app-name basic-auth` started
as `make server` starts it (SQLite backend here; test_several_machines.py runs the pipeline against the
PostgreSQL-backed one with its users): anonymous requests are refused, a user cannot write to another
user's experiment, a user's stages log, a stage without a login stops before any work, and no password
shows on a command line or in a log.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import psutil
import pytest
import requests

from pipeline.tracking.server import free_port
from tests.conftest import copy_project, tiny_params, tool_env, write_mirror
from tests.test_tracking_server import server_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]  # a real mlflow server: not for `make test-fast`

API = "/api/2.0/mlflow"


def login(credentials: Path) -> tuple[str, str]:
    config = configparser.ConfigParser()
    config.read(credentials)
    return config["mlflow"]["mlflow_tracking_username"], config["mlflow"]["mlflow_tracking_password"]


@dataclass
class AuthServer:
    folder: Path
    uri: str
    admin: tuple[str, str]
    outputs: list[str]  # what `server start` and `server user` printed

    def user(self, name: str) -> tuple[str, str]:
        return login(self.folder / "users" / f"{name}.credentials")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """`make server` (logins on, as by default) with the users alice and bob (`make server-user`)."""
    folder, port = tmp_path_factory.mktemp("auth-server"), free_port()
    try:
        outputs = [server_cli("start", "--dir", folder, "--backend", "sqlite", "--port", port)]
        outputs += [server_cli("user", "--dir", folder, name) for name in ("alice", "bob")]
        yield AuthServer(
            folder,
            f"http://127.0.0.1:{port}",
            login(folder / "admin.credentials"),
            [output.stdout + output.stderr for output in outputs],
        )
    finally:
        server_cli("stop", "--dir", folder, check=False)


def test_logins_are_kept_in_files_only_their_owner_can_read(auth_server: AuthServer) -> None:
    folder = auth_server.folder
    for secret in ("admin.credentials", "users/alice.credentials", "users/bob.credentials", "session.key"):
        assert (folder / secret).stat().st_mode & 0o777 == 0o600, secret
    assert (folder / "users").stat().st_mode & 0o777 == 0o700
    assert len(auth_server.admin[1]) >= 32 and auth_server.admin[1] != auth_server.user("alice")[1]
    status = server_cli("status", "--dir", folder).stdout
    assert f"logins: required (admin: {folder / 'admin.credentials'})" in status


def test_an_anonymous_request_or_a_wrong_password_gets_401(auth_server: AuthServer) -> None:
    search = f"{auth_server.uri}{API}/experiments/search?max_results=1"
    assert requests.get(search, timeout=30).status_code == 401
    assert requests.get(search, auth=("alice", "not her password"), timeout=30).status_code == 401
    assert requests.get(search, auth=auth_server.user("alice"), timeout=30).status_code == 200
    create = requests.post(f"{auth_server.uri}{API}/experiments/create", json={"name": "anonymous"}, timeout=30)
    assert create.status_code == 401


def test_a_user_cannot_write_to_another_users_experiment_but_both_log_into_the_datasets(
    auth_server: AuthServer,
) -> None:
    alice, bob = auth_server.user("alice"), auth_server.user("bob")

    def post(endpoint: str, user: tuple[str, str], **body: object) -> requests.Response:
        return requests.post(f"{auth_server.uri}{API}/{endpoint}", json=body, auth=user, timeout=30)

    private = post("experiments/create", alice, name="alice-private").json()["experiment_id"]
    assert post("runs/create", bob, experiment_id=private).status_code == 403
    assert post("experiments/delete", bob, experiment_id=private).status_code == 403
    assert requests.get(  # READ: a team sees every run
        f"{auth_server.uri}{API}/experiments/get", params={"experiment_id": private}, auth=bob, timeout=30
    ).ok

    mnist = requests.get(
        f"{auth_server.uri}{API}/experiments/get-by-name", params={"experiment_name": "mnist"}, auth=bob, timeout=30
    ).json()["experiment"]["experiment_id"]
    bobs = post("runs/create", bob, experiment_id=mnist)
    assert bobs.status_code == 200, bobs.text  # `server user` gave both EDIT on the datasets' experiments
    assert post("runs/create", alice, experiment_id=mnist).status_code == 200
    assert post("runs/delete", alice, run_id=bobs.json()["run"]["info"]["run_id"]).status_code == 403


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("auth-project")
    return copy_project(base / "repo", tiny_params(write_mirror(base / "mirror")))


def stage(project: Path, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline download mnist`, the first stage, as a user whose home is `home`."""
    home.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "download", "mnist"],
        cwd=project,
        env=tool_env(HOME=str(home), **env),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_stage_without_a_login_stops_before_any_work_naming_the_variables(
    auth_server: AuthServer, project: Path, tmp_path: Path
) -> None:
    result = stage(project, tmp_path / "home", MLFLOW_TRACKING_URI=auth_server.uri)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: MLFLOW_TRACKING_URI={auth_server.uri}: it asks for a login (HTTP 401")
    assert "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in line
    assert not (project / "data" / "raw" / "mnist").exists(), "it worked before it checked"

    wrong = stage(
        project,
        tmp_path / "home",
        MLFLOW_TRACKING_URI=auth_server.uri,
        MLFLOW_TRACKING_USERNAME="alice",
        MLFLOW_TRACKING_PASSWORD="a guess",
    )
    assert wrong.returncode == 2 and "the login given was refused (HTTP 401" in wrong.stderr


def test_a_users_stages_log_with_their_login_from_the_environment_or_their_credentials_file(
    auth_server: AuthServer, project: Path, tmp_path: Path
) -> None:
    user, password = auth_server.user("alice")
    by_env = stage(
        project,
        tmp_path / "home",
        MLFLOW_TRACKING_URI=auth_server.uri,
        MLFLOW_TRACKING_USERNAME=user,
        MLFLOW_TRACKING_PASSWORD=password,
    )
    assert by_env.returncode == 0, by_env.stderr
    home = tmp_path / "bobs-home"  # bob copied his login where MLflow's client looks: ~/.mlflow/credentials
    (home / ".mlflow").mkdir(parents=True)
    (home / ".mlflow" / "credentials").write_text((auth_server.folder / "users" / "bob.credentials").read_text())
    by_file = stage(project, home, MLFLOW_TRACKING_URI=auth_server.uri)
    assert by_file.returncode == 0, by_file.stderr
    assert "warning" not in by_env.stderr + by_file.stderr

    client = mlflow.MlflowClient(auth_server.uri)
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = auth_server.admin
    try:
        mnist = client.get_experiment_by_name("mnist")
        runs = client.search_runs([mnist.experiment_id], "tags.stage = 'download'")
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]


def test_a_run_the_servers_permissions_refuse_is_kept_and_logged_once_they_allow_it(
    auth_server: AuthServer, project: Path, tmp_path: Path
) -> None:
    """carol, made by hand without `make server-user`, may read the datasets' experiments but not log into them."""
    carol = ("carol", "carols-password-1234")
    made = requests.post(
        f"{auth_server.uri}{API}/users/create",
        json={"username": carol[0], "password": carol[1]},
        auth=auth_server.admin,
        timeout=30,
    )
    assert made.ok, made.text
    as_carol = {
        "MLFLOW_TRACKING_URI": auth_server.uri,
        "MLFLOW_TRACKING_USERNAME": carol[0],
        "MLFLOW_TRACKING_PASSWORD": carol[1],
    }
    refused = stage(project, tmp_path / "home", **as_carol)
    assert refused.returncode == 0, refused.stderr  # the stage's work is not lost to a permission
    (warning,) = [line for line in refused.stderr.splitlines() if line.startswith("warning: tracking:")]
    assert "the server does not let carol log into the experiment 'mnist' (PERMISSION_DENIED)" in warning
    assert "when the server lets it, `make resync` logs it" in warning

    resync = [sys.executable, "-m", "pipeline", "resync"]
    still = subprocess.run(resync, cwd=project, env=tool_env(**as_carol), capture_output=True, text=True, timeout=600)
    assert still.returncode == 2 and "PERMISSION_DENIED" in still.stderr and "is kept" in still.stderr

    mnist = requests.get(
        f"{auth_server.uri}{API}/experiments/get-by-name", params={"experiment_name": "mnist"}, auth=carol, timeout=30
    ).json()["experiment"]["experiment_id"]
    granted = requests.post(
        f"{auth_server.uri}/api/3.0/mlflow/users/permissions/grant",
        json={"username": "carol", "resource_type": "experiment", "resource_id": mnist, "permission": "EDIT"},
        auth=auth_server.admin,
        timeout=30,
    )
    assert granted.ok, granted.text
    logged = subprocess.run(resync, cwd=project, env=tool_env(**as_carol), capture_output=True, text=True, timeout=600)
    assert logged.returncode == 0, logged.stderr
    assert "resync: 1 of 1 kept runs logged" in logged.stdout


def test_no_password_is_on_a_command_line_or_in_a_log(auth_server: AuthServer) -> None:
    secrets = [auth_server.admin[1], auth_server.user("alice")[1], auth_server.user("bob")[1]]
    server_pid = json.loads((auth_server.folder / "server.json").read_text())["pid"]
    processes = [psutil.Process(server_pid), *psutil.Process(server_pid).children(recursive=True)]
    assert len(processes) >= 2, "the server and its workers"
    command_lines = [" ".join(process.cmdline()) for process in psutil.process_iter()]
    logs = [path.read_text(errors="replace") for path in auth_server.folder.glob("*.log")]
    for secret in secrets:
        assert not any(secret in line for line in command_lines)
        assert not any(secret in text for text in logs + auth_server.outputs)


def test_a_server_beyond_this_machine_refuses_to_start_without_logins(tmp_path: Path) -> None:
    result = server_cli(
        "start",
        "--dir",
        tmp_path,
        "--backend",
        "sqlite",
        "--host",
        "0.0.0.0",
        "--port",
        free_port(),
        "--no-auth",
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "error: --host 0.0.0.0 --no-auth: anyone who reaches this port could write and delete every run; drop --no-auth"
    )
    assert not (tmp_path / "server.json").exists(), "nothing was started"
