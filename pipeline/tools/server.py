"""`make server`: start, stop and check the team's MLflow tracking server (pipeline/tracking/server.py).

python -m pipeline server start   [--dir DIR] [--backend postgresql|sqlite] [--port N] [--host H] [--workers N]
python -m pipeline server stop    [--dir DIR]
python -m pipeline server status  [--dir DIR]
python -m pipeline server install            # Debian's postgresql, with apt-get (needs root or sudo)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.tracking.server import (
    BACKENDS,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_WORKERS,
    NOT_RUNNING,
    ServerFolder,
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
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--dir", type=Path, default=None, help="the server's folder (default: .server/ here)")
        if name == "start":
            command.add_argument("--backend", choices=BACKENDS, default="postgresql")
            command.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default: {DEFAULT_PORT}")
            command.add_argument("--host", default=DEFAULT_HOST, help=f"default: {DEFAULT_HOST} (this machine only)")
            command.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help=f"default: {DEFAULT_WORKERS}")
    commands.add_parser("install", help="install Debian's postgresql with apt-get when missing (root or sudo)")


def main(args: argparse.Namespace, params: None) -> int:
    if args.command == "install":
        print(f"server: PostgreSQL's programs are in {install_postgresql()}")
        return 0
    folder = ServerFolder(args.dir or default_folder())
    if args.command == "start":
        start(folder, args.backend, args.port, args.host, args.workers)
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
