"""`make ui`: the MLflow UI serving this project's store, on this machine only.

    python -m pipeline ui [--root DIR] [--port N] [--host H] [--workers N]

Serves `sqlite:///<root>/mlflow.db` with artifacts under `<root>/mlruns/` (the store every
stage logs into, see `tracking`), where <root> defaults to the project the command runs in.
The command is built here, in one place, so `make ui` and the browser test start the same
server; the process execs into `mlflow ui`, so stopping it stops the server.

Sized for one user on this machine: one worker, and MLflow's job runner (GenAI jobs:
a background scheduler and seven queue consumers) off unless
`MLFLOW_SERVER_ENABLE_JOB_EXECUTION` says otherwise. The full setup takes about a minute
to start on two cores; this one a few seconds.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.core import files
from pipeline.core.errors import UserError
from pipeline.tracking.server import environment, mlflow_executable

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_WORKERS = 1


def command(
    root: Path, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST, workers: int = DEFAULT_WORKERS
) -> list[str]:
    """The `mlflow ui` command line serving the store of the project at `root`."""
    root = Path(root).resolve()
    return [
        mlflow_executable(),
        "ui",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root",
        str(root / "mlruns"),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


PARAMS = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root", type=Path, default=None, help="the project whose store to serve (default: this repository)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default: {DEFAULT_PORT}")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"default: {DEFAULT_HOST} (this machine only)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help=f"default: {DEFAULT_WORKERS}")


def main(args: argparse.Namespace, params: None) -> None:
    root = (args.root or files.project_root()).resolve()
    if not (root / "mlflow.db").is_file():
        raise UserError(f"{root / 'mlflow.db'}: no MLflow store there; run `make repro` (or `dvc repro`) first")
    cmd = command(root, args.port, args.host, args.workers)
    print(f"MLflow UI for {root} on http://{args.host}:{args.port}", flush=True)
    os.execvpe(cmd[0], cmd, environment())
