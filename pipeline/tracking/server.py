"""`make server`: one MLflow tracking server for every machine of a class or team, in a folder you choose.

    python -m pipeline server start   [--dir DIR] [--backend postgresql|sqlite] [--port N] [--host H] [--workers N]
                                      [--no-auth]
    python -m pipeline server stop    [--dir DIR]
    python -m pipeline server status  [--dir DIR]
    python -m pipeline server user    NAME [--dir DIR]
    python -m pipeline server install            # Debian's postgresql, with apt-get (needs root or sudo)

Everything the server keeps lives in DIR (default: `.server/` in this project):

- `postgres/`: a PostgreSQL cluster of its own (Debian's `postgresql` package), created by
  initdb on the first start and started with the server. It listens on 127.0.0.1 only, on a
  free port (no Unix socket), and asks for a password, which only the server is given (`pgpass`,
  readable by its owner only). PostgreSQL refuses to run as root: started by root, the cluster
  belongs to the `postgres` user the package creates, and its commands run through runuser.
- `mlflow.db` instead, with `--backend sqlite`: the lighter option, for one machine's users.
- `artifacts/`: every run's figures, reports and models. The server proxies them (clients see
  `mlflow-artifacts:` URIs and upload and download through HTTP), so no client needs this disk.
- logins (MLflow's basic-auth app): `admin.credentials` (the admin's, generated on the first start),
  `users/NAME.credentials` (`server user NAME`), `basic_auth.ini` (MLFLOW_AUTH_CONFIG_PATH) and
  `session.key`, all readable by their owner only; the users and permissions themselves are in the
  `mlflow_auth` database (`basic_auth.db` with SQLite).
- `server.json` (what runs where, for stop and status), `mlflow.log` and `postgres.log`.

Stages log to it when `MLFLOW_TRACKING_URI=http://HOST:PORT` is set (pipeline.tracking.worker), logging in
with MLFLOW_TRACKING_USERNAME/PASSWORD or ~/.mlflow/credentials. The server binds 127.0.0.1 unless told
otherwise; without logins (--no-auth) it binds nothing else. TLS: a reverse proxy (docs/several-machines.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import files
from pipeline.core.errors import UserError
from pipeline.tracking.store import server_problem

DEFAULT_PORT = 5050  # beside `make ui`'s 5000
DEFAULT_HOST = "127.0.0.1"
DEFAULT_WORKERS = 2
BACKENDS = ("postgresql", "sqlite")
DB_HOST = "127.0.0.1"
DB_USER = DB_NAME = "mlflow"
AUTH_DB_NAME = "mlflow_auth"
# The design search's Optuna storage (pipeline/search/study.py): its own database, owned by its own role, so a
# search worker's login reaches the studies and nothing of MLflow's.
SEARCH_DB_NAME = SEARCH_USER = "optuna"
SEARCH_STORAGE_VARIABLE = "PIPELINE_SEARCH_STORAGE"  # what pipeline/search/study.py reads
ADMIN = "admin"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# MLflow's permissions: READ lets every user see every run; a user writes to what they created, and to
# the datasets' shared experiments, which `server user` grants them (EDIT: log, not delete others' runs).
DEFAULT_PERMISSION = "READ"
SHARED_PERMISSION = "EDIT"
CLUSTER_OWNER = "postgres"  # who runs the cluster when we are root: the user Debian's package creates
# Each uvicorn worker runs up to 40 requests at once (anyio's thread limit), and MLflow's log_batch holds one
# database connection while it opens a second: with SQLAlchemy's default pool (5 + 10 overflow) 15 requests
# holding their first connection starve, and the rest fail after 30 s (bench/RESULTS.md, server load). So one
# more connection than threads, for the tracking store and for the logins' store, and room for both in PostgreSQL.
POOL_SIZE = 31  # + SQLAlchemy's overflow of 10 = 41
CONNECTIONS_PER_WORKER = 2 * (POOL_SIZE + 10)
MAX_CONNECTIONS = 200
START_TIMEOUT = 300  # seconds: the first start creates MLflow's tables, slow on a busy 2-core machine
STOP_TIMEOUT = 30
NOT_RUNNING = 3  # status's exit code when the server is down (as pg_ctl and systemctl say it)


class ServerError(UserError):
    """The tracking server or its database could not be installed, started or stopped."""


def default_folder() -> Path:
    return files.project_root() / ".server"


# ---- PostgreSQL -------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs: Debian's newest /usr/lib/postgresql/<version>/bin,
    else wherever `initdb` is on PATH; None when PostgreSQL is not installed."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def install_postgresql() -> Path:
    """PostgreSQL's programs, installed with apt-get when missing (as root, or through sudo without a password)."""
    found = postgres_bin()
    if found is not None:
        return found
    # Two installs at once (two `make server`, or test files run side by side) would collide on apt's own
    # lock and one would fail; the second waits here, then finds the first one's install.
    with files.exclusive_lock(Path(tempfile.gettempdir()) / "pipeline-install-postgresql.lock"):
        return postgres_bin() or _apt_install_postgresql()


def _apt_install_postgresql() -> Path:
    if os.geteuid() == 0:
        sudo: list[str] = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        sudo = ["sudo", "-n"]
    else:
        raise ServerError(
            "PostgreSQL: not installed, and installing it needs root; run `sudo make server-deps` "
            "(Debian/Ubuntu: sudo apt-get install postgresql), or use `make server SERVER_BACKEND=sqlite`"
        )
    if not shutil.which("apt-get"):
        raise ServerError(
            "PostgreSQL: not installed, and this system has no apt-get; install PostgreSQL's server "
            "(initdb, pg_ctl) with its package manager, or use `make server SERVER_BACKEND=sqlite`"
        )
    print("server: installing Debian's postgresql with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
    ):
        result = subprocess.run([*sudo, *command], env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServerError(
                f"PostgreSQL: `{' '.join(command)}` failed ({result.returncode}): "
                f"{_last_line(result.stderr or result.stdout)}; install the postgresql package by hand, "
                f"or use `make server SERVER_BACKEND=sqlite`"
            )
    found = postgres_bin()
    if found is None:
        raise ServerError("PostgreSQL: apt-get installed postgresql but no initdb was found under /usr/lib/postgresql")
    return found


@dataclass
class Cluster:
    """A PostgreSQL cluster in `data`, on 127.0.0.1:`port`, driven by pg_ctl."""

    data: Path
    bin: Path
    log: Path

    @property
    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def init(self, password: str) -> None:
        """initdb: superuser `mlflow` with `password` over TCP; no local logins."""
        self.data.mkdir(mode=0o700, parents=True, exist_ok=True)
        password_file = self.data.parent / f".initdb-{secrets.token_hex(4)}"
        write_secret(password_file, password + "\n")
        try:
            self._own(self.data, password_file)
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                DB_USER,
                "--pwfile",
                str(password_file),
                "--auth-host=scram-sha-256",
                "--auth-local=reject",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            )
        finally:
            password_file.unlink(missing_ok=True)

    def running(self) -> bool:
        return self.initialized and self._pg_ctl("status", check=False).returncode == 0

    def start(self, port: int, max_connections: int = MAX_CONNECTIONS) -> None:
        self.log.touch()
        self._own(self.log)
        self._pg_ctl(
            "start",
            "-w",
            "-t",
            "120",
            "-l",
            str(self.log),
            "-o",
            f"-c listen_addresses={DB_HOST} -c port={port} -c unix_socket_directories='' "
            f"-c max_connections={max_connections}",
        )

    def stop(self) -> None:
        if self.running():
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(STOP_TIMEOUT))

    def _pg_ctl(self, action: str, *options: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("pg_ctl", action, "-D", str(self.data), *options, check=check)

    def _run(self, program: str, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / program), *arguments]
        if os.geteuid() == 0:  # initdb and postgres refuse root
            command = ["runuser", "-u", CLUSTER_OWNER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True)
        if check and result.returncode != 0:
            tail = _tail(self.log) if program == "pg_ctl" and self.log.is_file() else ""
            raise ServerError(
                f"{self.data}: PostgreSQL's `{program}{' ' + arguments[0] if program == 'pg_ctl' else ''}` failed "
                f"({result.returncode}): {_last_line(result.stderr or result.stdout)}; see "
                f"{self.log}{tail}"
            )
        return result

    def _own(self, *paths: Path) -> None:
        """As root, hand `paths` to the cluster's owner, after checking it can reach them."""
        if os.geteuid() != 0:
            return
        try:
            owner = pwd.getpwnam(CLUSTER_OWNER)
        except KeyError:
            raise ServerError(
                f"{self.data}: PostgreSQL refuses to run as root and there is no `{CLUSTER_OWNER}` user "
                f"to run it; install Debian's postgresql package (it creates one), or run "
                f"`make server` as another user"
            ) from None
        for path in paths:
            os.chown(path, owner.pw_uid, owner.pw_gid)
        reach = subprocess.run(["runuser", "-u", CLUSTER_OWNER, "--", "test", "-w", str(paths[0])])
        if reach.returncode != 0:
            raise ServerError(
                f"{self.data.parent}: the `{CLUSTER_OWNER}` user, who runs PostgreSQL for root, cannot "
                f"reach this folder (a folder above it is closed to other users, as /root is); choose "
                f"one it can reach, e.g. `make server SERVER_DIR=/var/tmp/mlflow-server`"
            )


def _create_databases(port: int, passfile: Path, search_password: str) -> None:
    """MLflow's database, the one of its logins (users, passwords, permissions), and the design search's,
    with the role that owns it."""
    import psycopg  # the server's driver: only `make server` needs it, never a stage
    from psycopg import sql

    with psycopg.connect(
        host=DB_HOST,
        port=port,
        user=DB_USER,
        dbname="postgres",
        passfile=str(passfile),
        autocommit=True,
        connect_timeout=30,
    ) as connection:
        if connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (SEARCH_USER,)).fetchone() is None:
            connection.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(SEARCH_USER), sql.Literal(search_password)
                )
            )
        owners = {DB_NAME: DB_USER, AUTH_DB_NAME: DB_USER, SEARCH_DB_NAME: SEARCH_USER}
        for name, owner in owners.items():
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                connection.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner))
                )


# ---- The server folder ------------------------------------------------------------------------


@dataclass
class ServerFolder:
    """DIR and what lives in it (see the module's docstring)."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    @property
    def state_file(self) -> Path:
        return self.root / "server.json"

    @property
    def pgpass(self) -> Path:
        return self.root / "pgpass"

    @property
    def search_pgpass(self) -> Path:  # the search role's login, for the workers of a design search
        return self.root / "search.pgpass"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def mlflow_log(self) -> Path:
        return self.root / "mlflow.log"

    @property
    def auth_config(self) -> Path:
        return self.root / "basic_auth.ini"

    @property
    def admin_credentials(self) -> Path:
        return self.credentials_file(ADMIN)

    def credentials_file(self, user: str) -> Path:
        """A user's login, in the format of MLflow's ~/.mlflow/credentials, readable by its owner only."""
        return self.root / "users" / f"{user}.credentials" if user != ADMIN else self.root / "admin.credentials"

    def cluster(self, pg_bin: Path | None = None) -> Cluster:
        pg_bin = pg_bin or postgres_bin()
        if pg_bin is None:
            raise ServerError(
                "PostgreSQL: not installed; run `make server-deps` (as root: installs Debian's "
                "postgresql), or use `make server SERVER_BACKEND=sqlite`"
            )
        return Cluster(self.root / "postgres", pg_bin, self.root / "postgres.log")

    def state(self) -> dict[str, Any] | None:
        return json.loads(self.state_file.read_text()) if self.state_file.is_file() else None

    def save_state(self, state: dict[str, Any]) -> None:
        files.write_json(self.state_file, state)

    def password(self) -> str:
        """The database password, made once and kept in `pgpass` (libpq's password file format)."""
        if self.pgpass.is_file():
            return self.pgpass.read_text().strip().rsplit(":", 1)[1]
        password = secrets.token_urlsafe(24)
        write_secret(self.pgpass, f"{DB_HOST}:*:*:{DB_USER}:{password}\n")  # libpq ignores one others can read
        return password

    def search_password(self) -> str:
        """The search role's password, made once and kept in `search.pgpass`."""
        if self.search_pgpass.is_file():
            return self.search_pgpass.read_text().strip().rsplit(":", 1)[1]
        password = secrets.token_urlsafe(24)
        write_secret(self.search_pgpass, f"{DB_HOST}:*:{SEARCH_DB_NAME}:{SEARCH_USER}:{password}\n")
        return password


def search_storage_uri(db_port: int) -> str:
    """The design search's Optuna storage: no password in it (libpq reads it from PGPASSFILE)."""
    return f"postgresql+psycopg://{SEARCH_USER}@{DB_HOST}:{db_port}/{SEARCH_DB_NAME}"


def backend_uri(folder: ServerFolder, backend: str, db_port: int | None, database: str = DB_NAME) -> str:
    """The server's backend store (or, with AUTH_DB_NAME, its logins' store). No password in it: libpq
    reads it from PGPASSFILE, so it shows nowhere."""
    if backend == "sqlite":
        return f"sqlite:///{folder.root / ('mlflow.db' if database == DB_NAME else 'basic_auth.db')}"
    return f"postgresql+psycopg://{DB_USER}@{DB_HOST}:{db_port}/{database}"


# ---- Logins -----------------------------------------------------------------------------------


def write_secret(path: Path, text: str) -> None:
    """`text` into a new file only its owner can read: never through a command line or a log."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(text)


def write_credentials(path: Path, user: str, password: str) -> None:
    write_secret(path, f"[mlflow]\nmlflow_tracking_username = {user}\nmlflow_tracking_password = {password}\n")


def read_credentials(path: Path) -> tuple[str, str]:
    """(user, password) from a credentials file (MLflow's ~/.mlflow/credentials format)."""
    import configparser

    config = configparser.ConfigParser()
    try:
        config.read_string(path.read_text())
        login = config["mlflow"]
        return login["mlflow_tracking_username"], login["mlflow_tracking_password"]
    except (OSError, KeyError, configparser.Error) as error:
        raise ServerError(
            f"{path}: not a readable login ({error}); it should hold [mlflow] mlflow_tracking_username "
            f"and mlflow_tracking_password"
        ) from None


def admin_login(folder: ServerFolder) -> tuple[str, str]:
    """The admin's login, made on the first start with authentication and kept in admin.credentials."""
    if not folder.admin_credentials.is_file():
        write_credentials(folder.admin_credentials, ADMIN, secrets.token_urlsafe(24))
    return read_credentials(folder.admin_credentials)


def session_key(folder: ServerFolder) -> str:
    """The key that signs the UI's sessions and CSRF tokens, the same for every worker and restart."""
    path = folder.root / "session.key"
    if not path.is_file():
        write_secret(path, secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def write_auth_config(folder: ServerFolder, backend: str, db_port: int | None) -> None:
    """MLflow's basic-auth settings (MLFLOW_AUTH_CONFIG_PATH), rewritten at every start: the database's
    port changes. It holds no secret; the admin's password reaches the server through its environment."""
    folder.auth_config.unlink(missing_ok=True)
    write_secret(
        folder.auth_config,
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = {backend_uri(folder, backend, db_port, AUTH_DB_NAME)}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
    )


def add_user(folder: ServerFolder, name: str, shared_experiments: list[str]) -> Path:
    """Create the user `name` on the running server with a new password, kept in its credentials file,
    and let it log into the datasets' shared experiments (created here if missing)."""
    import requests

    state = folder.state()
    if not state or not _server_alive(state):
        raise ServerError(f"{folder.root}: no server runs there; start it (`make server SERVER_DIR={folder.root}`)")
    if not state.get("auth"):
        raise ServerError(f"{state['uri']}: this server runs without logins (--no-auth); restart it without --no-auth")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name == ADMIN:
        raise ServerError(f"user {name!r}: a user name is letters, digits, '-', '_' or '.', and not {ADMIN!r}")
    target = folder.credentials_file(name)
    if target.exists():
        raise ServerError(f"user {name!r}: already created (its login is in {target})")
    session = requests.Session()
    session.auth = admin_login(folder)

    def call(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = session.request(method, state["uri"] + path, timeout=60, **kwargs)
        if not response.ok:
            raise ServerError(f"{state['uri']}{path}: answered {response.status_code}: {response.text[:200]}")
        return response.json() if response.content else {}

    password = secrets.token_urlsafe(18)
    call("POST", "/api/2.0/mlflow/users/create", json={"username": name, "password": password})
    write_credentials(target, name, password)
    for experiment in shared_experiments:
        found = session.get(
            state["uri"] + "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": experiment}, timeout=60
        )
        if found.ok:
            experiment_id = found.json()["experiment"]["experiment_id"]
        else:  # as a stage creates it (pipeline.tracking.worker.experiment_id)
            experiment_id = call(
                "POST",
                "/api/2.0/mlflow/experiments/create",
                json={"name": experiment, "tags": [{"key": "dataset", "value": experiment}]},
            )["experiment_id"]
        call(
            "POST",
            "/api/3.0/mlflow/users/permissions/grant",
            json={
                "username": name,
                "resource_type": "experiment",
                "resource_id": experiment_id,
                "permission": SHARED_PERMISSION,
            },
        )
    return target


def mlflow_command(store: str, artifacts: Path, host: str, port: int, workers: int, auth: bool) -> list[str]:
    """`mlflow server` with proxied artifacts: clients upload and download through it (mlflow-artifacts:)."""
    return [
        mlflow_executable(),
        "server",
        *(["--app-name", "basic-auth"] if auth else []),
        "--backend-store-uri",
        store,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def start(
    folder: ServerFolder,
    backend: str = "postgresql",
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    workers: int = DEFAULT_WORKERS,
    auth: bool = True,
) -> str:
    """Start the database (PostgreSQL) and the MLflow server in `folder`; returns the tracking URI.
    A server already running there is left as it is."""
    if not auth and host not in LOOPBACK:
        raise ServerError(
            f"--host {host} --no-auth: anyone who reaches this port could write and delete every run; "
            f"drop --no-auth (users log in; `make server-user NAME=...` adds them), or bind {DEFAULT_HOST}"
        )
    folder.root.mkdir(parents=True, exist_ok=True)
    state = folder.state()
    if state and _server_alive(state):
        if (state["backend"], state["port"], state["host"], state.get("auth", False)) != (backend, port, host, auth):
            raise ServerError(
                f"{folder.root}: a {state['backend']} server already runs there at {state['uri']}; "
                f"stop it first (`make server-stop SERVER_DIR={folder.root}`)"
            )
        print(f"server: already running at {state['uri']}", flush=True)
        return state["uri"]
    if not _port_free(host, port):
        raise ServerError(f"{host}:{port}: the port is in use; choose another (`make server SERVER_PORT=...`)")

    env = environment()
    db_port = None
    if backend == "postgresql":
        cluster = folder.cluster()
        password = folder.password()
        if not cluster.initialized:
            print(f"server: creating a PostgreSQL cluster in {cluster.data}", flush=True)
            cluster.init(password)
        db_port = state.get("db_port") if state and cluster.running() else None
        if db_port is None:
            db_port = free_port()
            cluster.start(db_port, max(MAX_CONNECTIONS, workers * CONNECTIONS_PER_WORKER + 20))
        _create_databases(db_port, folder.pgpass, folder.search_password())
        env["PGPASSFILE"] = str(folder.pgpass)
    if auth:
        write_auth_config(folder, backend, db_port)
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(folder.auth_config)
        # read by MLflow when it creates the admin, on the first start; the environment, not the
        # command line, so no other user sees it (ps shows command lines to everyone)
        env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"] = admin_login(folder)
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = session_key(folder)

    uri = f"http://{host}:{port}"
    command = mlflow_command(backend_uri(folder, backend, db_port), folder.artifacts, host, port, workers, auth)
    with open(folder.mlflow_log, "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=folder.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its group: stop reaches workers
            umask=0o077,  # its databases (password hashes too) and artifacts: for the server's owner only
        )
    state = {
        "backend": backend,
        "uri": uri,
        "host": host,
        "port": port,
        "pid": process.pid,
        "db_port": db_port,
        "store": backend_uri(folder, backend, db_port),
        "artifacts": str(folder.artifacts),
        "auth": auth,
    }
    folder.save_state(state)
    try:
        _wait_until_it_answers(uri, process, folder.mlflow_log, admin_login(folder) if auth else None)
    except BaseException:
        stop(folder)
        raise
    logins = (
        f"logins required; the admin's is in {folder.admin_credentials}, `make server-user NAME=...` adds users"
        if auth
        else "no logins: this machine only"
    )
    search = (
        f"\n  design search workers: export {SEARCH_STORAGE_VARIABLE}={search_storage_uri(db_port)} "
        f"PGPASSFILE={folder.search_pgpass}"
        if db_port is not None
        else ""
    )
    print(
        f"server: MLflow tracking server on {uri} ({backend}; artifacts in {folder.artifacts}; {logins})\n"
        f"  export MLFLOW_TRACKING_URI={uri}{search}",
        flush=True,
    )
    return uri


def stop(folder: ServerFolder) -> bool:
    """Stop the MLflow server and the database in `folder`; False if nothing ran."""
    state = folder.state()
    if state is None:
        return False
    stopped = False
    if _server_alive(state):
        _stop_group(state["pid"])
        stopped = True
    if state["backend"] == "postgresql" and folder.cluster().running():
        folder.cluster().stop()
        stopped = True
    folder.save_state({**state, "pid": None})
    return stopped


def status(folder: ServerFolder) -> tuple[bool, str]:
    """Whether the server in `folder` answers, and a few lines saying what runs there."""
    state = folder.state()
    if state is None:
        return False, f"no server in {folder.root} (start one with `make server SERVER_DIR={folder.root}`)"
    login = admin_login(folder) if state.get("auth") else None
    problem = server_problem(state["uri"], timeout=5, login=login) if _server_alive(state) else "not running"
    lines = [
        f"MLflow tracking server {state['uri']}: {'answers' if problem is None else problem}",
        f"  logins: {f'required (admin: {folder.admin_credentials})' if login else 'none (this machine only)'}",
        f"  backend store: {state['store']}",
        f"  artifacts: {state['artifacts']}",
        f"  logs: {folder.mlflow_log}",
    ]
    if state["backend"] == "postgresql":
        cluster = folder.cluster()
        lines.append(
            f"  PostgreSQL cluster {cluster.data}: {'running' if cluster.running() else 'stopped'} (log {cluster.log})"
        )
    if problem is None:
        lines.append(f"  export MLFLOW_TRACKING_URI={state['uri']}")
        if state.get("db_port") is not None:
            lines.append(
                f"  design search workers: export {SEARCH_STORAGE_VARIABLE}={search_storage_uri(state['db_port'])} "
                f"PGPASSFILE={folder.search_pgpass}"
            )
    return problem is None, "\n".join(lines)


def _wait_until_it_answers(uri: str, process: subprocess.Popen, log: Path, login: tuple[str, str] | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while (problem := server_problem(uri, timeout=5, login=login)) is not None:
        if process.poll() is not None or time.monotonic() > deadline:
            what = (
                f"exited with status {process.returncode}"
                if process.poll() is not None
                else f"did not answer within {START_TIMEOUT} s ({problem})"
            )
            raise ServerError(f"{uri}: the MLflow server {what}; see {log}{_tail(log)}")
        time.sleep(1)


def _server_alive(state: dict[str, Any]) -> bool:
    """Whether the recorded MLflow server process still runs (a reused pid running something else does not count)."""
    import psutil

    pid = state.get("pid")
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        return (
            process.status() != psutil.STATUS_ZOMBIE
            and "server" in process.cmdline()
            and str(state["port"]) in process.cmdline()
        )
    except psutil.Error:
        return False


def _stop_group(pid: int) -> None:
    """SIGTERM to the server's process group (uvicorn's workers too), then SIGKILL to what is left."""
    import psutil

    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).wait(STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = DB_HOST) -> int:
    """A port nothing listens on at the moment."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace").splitlines()[-lines:] if log.is_file() else []
    return ("; its last lines:\n" + "\n".join(text)) if text else ""


def mlflow_executable() -> str:
    """The `mlflow` of the interpreter running this (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "mlflow"
    return str(beside) if beside.is_file() else (shutil.which("mlflow") or "mlflow")


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with MLflow's job runner and telemetry off and its
    database pools sized to its workers' threads (POOL_SIZE), unless set."""
    env = dict(os.environ if base is None else base)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline anyway; its thread edits os.environ under requests
    env.setdefault("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", str(POOL_SIZE))
    return env
