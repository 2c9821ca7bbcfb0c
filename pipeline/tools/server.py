"""`make server`: start, stop and check the team's MLflow tracking server (pipeline/tracking/server.py).

python -m pipeline server start   [--dir DIR] [--backend postgresql|sqlite] [--port N] [--host H] [--workers N]
                                  [--no-auth]
python -m pipeline server stop    [--dir DIR]
python -m pipeline server status  [--dir DIR]
python -m pipeline server user    NAME [--dir DIR]   # a login for NAME, kept in DIR/users/NAME.credentials
python -m pipeline server install            # Debian's postgresql, with apt-get (needs root or sudo)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import datasets
from pipeline.tracking.server import (
    BACKENDS,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_WORKERS,
    NOT_RUNNING,
    ServerFolder,
    add_user,
    default_folder,
    install_postgresql,
    start,
    status,
    stop,
)

PARAMS = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("start", "start the database and the MLflow server"),
        ("stop", "stop both"),
        ("status", "say what runs (exit status 3 when the server does not answer)"),
        ("user", "create a user, with a login kept in DIR/users/NAME.credentials"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--dir", type=Path, default=None, help="the server's folder (default: .server/ here)")
        if name == "start":
            command.add_argument("--backend", choices=BACKENDS, default="postgresql")
            command.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default: {DEFAULT_PORT}")
            command.add_argument("--host", default=DEFAULT_HOST, help=f"default: {DEFAULT_HOST} (this machine only)")
            command.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help=f"default: {DEFAULT_WORKERS}")
            command.add_argument(
                "--no-auth", dest="auth", action="store_false", help=f"no logins (only with --host {DEFAULT_HOST})"
            )
        if name == "user":
            command.add_argument("name", help="the user's name: letters, digits, '-', '_', '.'")
    commands.add_parser("install", help="install Debian's postgresql with apt-get when missing (root or sudo)")


def main(args: argparse.Namespace, params: None) -> int:
    if args.command == "install":
        print(f"server: PostgreSQL's programs are in {install_postgresql()}")
        return 0
    folder = ServerFolder(args.dir or default_folder())
    if args.command == "start":
        start(folder, args.backend, args.port, args.host, args.workers, args.auth)
    elif args.command == "user":
        login = add_user(folder, args.name, list(datasets.REGISTRY))
        print(
            f"server: user {args.name} created, with EDIT on the experiments {', '.join(datasets.REGISTRY)}\n"
            f"  their login is in {login}: give it to them privately; on their machine it goes to "
            f"~/.mlflow/credentials (or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
        )
    elif args.command == "stop":
        print(
            f"server: stopped the server in {folder.root}"
            if stop(folder)
            else f"server: nothing was running in {folder.root}"
        )
    else:
        answers, report = status(folder)
        print(report)
        return 0 if answers else NOT_RUNNING
    return 0
