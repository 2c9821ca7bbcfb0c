"""Where the tracking store is, whether tracking is on, and whether a tracking server answers.

The store is `sqlite:///<root>/mlflow.db` with artifacts under `<root>/mlruns/`, where <root> is the
user's repository even when a queued `dvc exp run` executes in a temporary copy
(`files.project_root`), so every run lands in the store `make ui` serves. `MLFLOW_TRACKING_URI`
overrides it (e.g. a shared server); `PIPELINE_TRACKING=off` turns tracking off.
A server is checked before a stage does any work (`check_server`).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import files
from pipeline.core.errors import UserError

if TYPE_CHECKING:
    import ssl


def enabled() -> bool:
    return os.environ.get("PIPELINE_TRACKING", "on").lower() not in ("off", "0", "false", "no")


def project_store_uri() -> str:
    return f"sqlite:///{files.project_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or project_store_uri()


def artifact_root() -> Path:
    return files.project_root() / "mlruns"


def mlflow_api() -> Any:
    import mlflow  # imported lazily: it costs seconds, and data-only code paths do not need it

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


# --- A tracking server: checked before a stage works, so a stage never trains for an hour and then fails to log.


class TrackingServerError(UserError):
    """The tracking server MLFLOW_TRACKING_URI names does not answer, or refuses."""


SERVER_CHECK_TIMEOUT = 15.0  # seconds


# The schemes MLflow's tracking-store registry knows without plugins (mlflow/tracking/_tracking_service/utils.py);
# a plugin adds its own through the `mlflow.tracking_store` entry points.
MLFLOW_SCHEMES = (
    "",
    "file",
    "http",
    "https",
    "sqlite",
    "postgresql",
    "mysql",
    "mssql",
    "databricks",
    "databricks-uc",
    "uc",
)


def check_server() -> None:
    """Raise TrackingServerError, naming the URI and what to check, unless MLflow can use the URI stages
    log to and, for a server, it answers an MLflow request. The project's SQLite file passes."""
    uri = tracking_uri()
    if not enabled():
        return
    scheme = urllib.parse.urlparse(uri).scheme
    # `sqlite:///...` and `postgresql+psycopg://...` name an engine before the `+driver`; `C:\\...` a drive
    if scheme.split("+")[0] not in MLFLOW_SCHEMES and len(scheme) > 1 and scheme not in _plugin_schemes():
        raise TrackingServerError(
            f"MLFLOW_TRACKING_URI={uri}: MLflow has no tracking store for '{scheme}://'; use http(s)://host:port "
            f"for a server, sqlite:///path/mlflow.db or postgresql://..., or unset it to log into this "
            f"project's mlflow.db"
        )
    if scheme in ("http", "https"):
        problem = server_problem(uri)
        if problem is not None:
            raise TrackingServerError(
                f"MLFLOW_TRACKING_URI={uri}: {problem}; or set PIPELINE_TRACKING=off to run without tracking"
            )


def _plugin_schemes() -> set[str]:
    from importlib.metadata import entry_points

    return {entry.name for entry in entry_points(group="mlflow.tracking_store")}


def server_problem(uri: str, timeout: float = SERVER_CHECK_TIMEOUT, login: tuple[str, str] | None = None) -> str | None:
    """What is wrong with the MLflow server at `uri` and what to check, or None when it answers.

    It must answer a request that reads its database (searching experiments), not only /health:
    a server whose database is down still says OK there. Plain urllib, not MLflow's client: a stage
    checks before MLflow has loaded (seconds), and MLflow's client would retry for minutes."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1", headers=_server_credentials(login)
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_tls_context(uri)) as response:
            json.load(response)
    except urllib.error.HTTPError as error:
        status = f"HTTP {error.code} {error.reason}"
        if error.code in (401, 403):
            given = "the login given was refused" if _server_credentials(login) else "it asks for a login"
            return (
                f"{given} ({status}); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                f"(or ~/.mlflow/credentials, or MLFLOW_TRACKING_TOKEN) to a user of that server "
                f"(its admin adds one with `make server-user NAME=...`)"
            )
        if error.code >= 500:
            return f"the server answers but fails ({status}); check its log and its database (`make server-status`)"
        return f"no MLflow tracking server answers there ({status}); check the URI (http://host:port)"
    except OSError as error:  # URLError, refused, unreachable, timed out, TLS
        reason = getattr(error, "reason", error)
        return (
            f"no server answers ({reason}); start it (`make server`) or check the host and port, "
            f"or unset MLFLOW_TRACKING_URI to log into this project's mlflow.db"
        )
    except ValueError:
        return "something answers, but not as an MLflow tracking server; check the URI (http://host:port)"
    return None


def _server_credentials(login: tuple[str, str] | None = None) -> dict[str, str]:
    """The HTTP headers for `login`, else those MLflow's client sends: from its environment variables,
    then from ~/.mlflow/credentials (as mlflow.utils.credentials reads them)."""
    if login:
        return {"Authorization": "Basic " + base64.b64encode(":".join(login).encode()).decode()}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not (user and password):
        saved = _saved_login()
        user = user or saved.get("mlflow_tracking_username")
        password = password or saved.get("mlflow_tracking_password")
    if token:
        return {"Authorization": f"Bearer {token}"}
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _saved_login() -> dict[str, str]:
    import configparser

    config = configparser.ConfigParser()
    try:
        config.read(Path("~/.mlflow/credentials").expanduser())
    except configparser.Error:
        return {}
    return dict(config["mlflow"]) if config.has_section("mlflow") else {}


def _tls_context(uri: str) -> ssl.SSLContext | None:
    """As MLflow's client verifies an https server: MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_INSECURE_TLS."""
    if not uri.startswith("https:"):
        return None
    import ssl  # only for https servers: not worth importing for every stage

    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        return ssl._create_unverified_context()  # the user asked for it, as MLflow's client honours it
    return ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))
