"""Runs whose tracking server stopped answering mid-stage, kept on disk until `make resync` logs them.

    python -m pipeline resync            # (make resync) log every kept run into its server, oldest first
    python -m pipeline resync --list     # what is kept
    python -m pipeline resync --to URI   # log them into another tracking store instead

A stage checks its tracking server before it starts (`tracking.check_server`); if the server
stops answering after that, the stage does not fail: its tracking worker keeps the run (what
the stage logged into it, the files it named, copied, and the DVC experiment and commit it ran
in) in `.tracking-spool/<time>-<id>/` of the project, prints a warning, and the stage ends as it
would have, so DVC keeps its outputs. A run started after that in the same worker goes straight
to the spool, and so does a run that continues a run still in it.

Resync logs each kept run into the server it was meant for: into the same MLflow run when the
server has it (only what had not reached it), else into a new run, made as the stage would have
made it (an evaluation continues its train run). A run that never reached the server got a
local id (`spooled-<hex>`), which train writes into run.json for evaluate; resync records which
server run it became (`replayed.json`, kept), so evaluations, then and later, find their train run.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.core import files
from pipeline.core.errors import UserError

LOCAL_ID_PREFIX = "spooled-"
ENTRY_FILE = "run.json"


class ResyncError(UserError):
    """The server stopped answering again while runs were being replayed into it."""


def spool_dir() -> Path:
    return files.project_root() / ".tracking-spool"


def server_unreachable(error: BaseException) -> bool:
    """Whether `error` (from MLflow's client) means the server went away: refused, unreachable or timed
    out, or failing with 5xx answers until MLflow's retries ran out. A refused request (a bad param,
    a missing run) is not: that is a bug to show, not a run to keep."""
    import requests

    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:  # MLflow wraps requests' errors (as their context)
        seen.add(id(cause))
        if isinstance(cause, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError)):
            return True
        if isinstance(cause, requests.HTTPError) and cause.response is not None and cause.response.status_code >= 500:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def waiting(run_id: str | None) -> bool:
    """Whether `run_id` is the local id of a run still in the spool (not yet resynced)."""
    return run_id is not None and run_id.startswith(LOCAL_ID_PREFIX) and resolved(run_id) == run_id


def resolved(run_id: str | None) -> str | None:
    """The server's id of a resynced run's local id; any other id as it is."""
    if run_id is None or not run_id.startswith(LOCAL_ID_PREFIX):
        return run_id
    return _replayed().get(run_id, run_id)


def _replayed() -> dict[str, str]:
    path = spool_dir() / "replayed.json"
    return files.read_json(path) if path.is_file() else {}


def _record_replayed(local_id: str, run_id: str) -> None:
    files.write_json(spool_dir() / "replayed.json", {**_replayed(), local_id: run_id})


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """The environment variables `values` set while the block runs (the stage's DVC experiment and commit,
    which tracking reads when it makes a run)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class SpooledRun:
    """One kept run: `ENTRY_FILE` (where it was going, how it starts, its requests and how many reached the
    server) and `files/`, copies of the files its requests name."""

    def __init__(self, folder: Path, data: dict[str, Any]) -> None:
        self.folder = folder
        self.data = data

    @classmethod
    def create(
        cls,
        uri: str,
        start: dict[str, Any],
        context: dict[str, str],
        run_id: str | None,
        requests: list[list[Any]],
        done: int,
        reason: str,
    ) -> SpooledRun:
        """A new entry for a run of `start` going to `uri`; `done` of its `requests` reached the server."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        entry = cls(
            spool_dir() / f"{stamp}-{uuid.uuid4().hex[:8]}",
            {
                "uri": uri,
                "start": start,
                "context": context,
                "run_id": run_id,
                "local_id": None if run_id else LOCAL_ID_PREFIX + uuid.uuid4().hex,
                "requests": [],
                "done": done,
                "status": None,
                "complete": False,
                "writer_pid": os.getpid(),
                "reason": reason,
            },
        )
        for request in requests:
            entry.add(request, save=False)
        entry.save()
        return entry

    @classmethod
    def load(cls, folder: Path) -> SpooledRun:
        return cls(folder, files.read_json(folder / ENTRY_FILE))

    uri = property(lambda self: self.data["uri"])  # the tracking server it was going to
    start = property(lambda self: self.data["start"])  # the stage's start request (tracking.stage_run)
    context = property(lambda self: self.data["context"])  # environment variables the run's tags come from
    run_id = property(lambda self: self.data["run_id"])  # its run on the server, if it has one
    local_id = property(lambda self: self.data["local_id"])  # the id the stage got when it had none
    requests = property(lambda self: self.data["requests"])  # what the stage logged, in order
    done = property(lambda self: self.data["done"])  # how many of them reached run_id
    status = property(lambda self: self.data["status"])  # how the stage ended it (None: the stage died)

    def add(self, request: list[Any], save: bool = True) -> None:
        """Keep `request`, with a copy of each file it names (the stage may replace them before resync)."""
        number = len(self.data["requests"])
        kept = [request[0]]
        for argument in request[1:]:
            if isinstance(argument, str) and os.path.isabs(argument) and os.path.exists(argument):
                copy = self.folder / "files" / f"{number:04d}" / Path(argument).name
                copy.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if os.path.isdir(argument) else shutil.copy2)(argument, copy)
                argument = str(copy)
            kept.append(argument)
        self.data["requests"].append(kept)
        if save:
            self.save()

    def finish(self, status: str | None) -> None:
        """The stage ended the run with `status` (None: the stage died, and the run ends FAILED)."""
        self.data.update(status=status, complete=True)
        self.save()

    def started(self, run_id: str) -> None:
        """Resync made or reopened run `run_id` for this entry."""
        if self.data["run_id"] != run_id:
            self.data.update(run_id=run_id, done=0)
            self.save()

    def logged_one(self) -> None:
        self.data["done"] += 1
        self.save()

    def in_progress(self) -> bool:
        """Whether a stage is still logging into this entry (its worker lives)."""
        import psutil

        return not self.data["complete"] and psutil.pid_exists(self.data["writer_pid"])

    def describe(self) -> str:
        start = self.data["start"]
        what = " ".join(str(part) for part in (start["stage"], start["dataset"], start.get("model")) if part)
        return (
            f"{self.folder.name}: {what} (DVC experiment {self.data['context'].get('DVC_EXP_NAME', '?')}), "
            f"{len(self.data['requests']) - self.data['done']} of {len(self.data['requests'])} requests to log "
            f"into {self.data['uri']}"
        )

    def save(self) -> None:
        files.write_json(self.folder / ENTRY_FILE, self.data)

    def remove(self) -> None:
        if self.local_id:
            _record_replayed(self.local_id, self.run_id)
        shutil.rmtree(self.folder)


def entries() -> list[SpooledRun]:
    """The kept runs, oldest first (so a train run is replayed before its evaluation)."""
    folder = spool_dir()
    found = sorted(p for p in folder.iterdir() if (p / ENTRY_FILE).is_file()) if folder.is_dir() else []
    return [SpooledRun.load(path) for path in found]
