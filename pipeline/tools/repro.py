"""`python -m pipeline repro [-j auto|N] [TARGET ...]`: `dvc repro`, with independent stages side by side.

DVC runs stages one after another, and a LeNet-sized training keeps only one core busy. This runner
reads the stage graph and what is stale once, in this process,
through DVC's Python API (a run with nothing to do costs what `dvc status` costs), then runs
every stale stage, and every stage downstream of one, as `dvc repro -s <stage>` as soon as the
stages it depends on have succeeded. DVC itself still decides whether a stage must run (one
whose inputs came out unchanged is skipped), records dvc.lock and fills its cache, exactly
as `dvc repro` does, which keeps working on its own, one stage at a time.

Stages are packed by thread budget, never more threads in flight than `-j` (default `auto`:
the cores this process may use): a train stage needs its design's `train.threads`, its
evaluate stage the same (evaluate computes with the threads the model was trained with), any
other stage 1. `train.threads: auto` means what fits: the cores divided among the trainings
to run, at most one per core (pipeline/training/compute.py). With a GPU, TensorFlow stages also take
turns on it: each TensorFlow process claims the whole GPU's memory.

Of the stages ready to start, the one with the longest chain of work still behind it starts
first (critical path first): the data stages of a dataset whose trainings are long, then the
longest trainings. A training's length is estimated from the last one on record (its
train.json, which git keeps: seconds per epoch times the epochs now asked for). A stage that
would need threads still in use waits for them, and the runner starts nothing in its place
that it expects to end later than those threads free up: otherwise a two-thread training
could wait behind one-thread trainings queued after it.

`-s` (single stage) matters: without it `dvc repro <stage>` also checks the stages upstream
and write-locks their outputs, which a running training reads (DVC issue #5795). Each command
runs with `--wait-for-lock`: DVC holds its repository lock while a stage starts and while it
records its results, and a `dvc repro` that finds it taken would fail "Unable to acquire
lock", even after its training ran. A start that fails on the lock anyway (DVC's lock on its
rwlock file gives up after 3 s) is retried with back-off. Every line of a stage's output is
prefixed with its name. The first stage that fails stops the runner from starting new ones;
those running finish, and it exits with status 1 and that stage's error line.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from pipeline.config import Params, load_params
from pipeline.core.errors import UserError
from pipeline.core.paths import RunPaths
from pipeline.core.process import gpu_present
from pipeline.training import compute

LOCK_FAILURE = "Unable to acquire lock"
LOCK_RETRIES = 8  # back-off 0.5 s, 1 s, 2 s, ... up to LOCK_BACKOFF_MAX
LOCK_BACKOFF_MAX = 8.0
SHORT_STAGE_SECONDS = 5.0  # any stage but a training: data, evaluate, compare
UNKNOWN_EPOCH_SECONDS = 30.0  # a training with nothing on record: a guess, used only to order stages
TENSORFLOW_STAGES = ("train", "evaluate", "robustness")
# What every `dvc repro` prints after updating dvc.lock (the start of each line): said once at the
# end instead of once per stage.
DVC_HINTS = (
    "To track the changes with git, run:",
    "git add ",
    "To enable auto staging, run:",
    "dvc config core.autostage true",
    "Use `dvc push` to send your updates to remote storage.",
)


@dataclass
class Stage:
    """A stage to run: its DVC name, the stages to run before it, and what it needs while it runs."""

    name: str
    upstream: set[str]
    threads: int
    gpu: bool = False  # takes the GPU's turn
    training: bool = False
    seconds: float = SHORT_STAGE_SECONDS  # how long it is expected to run
    priority: float = 0.0  # its seconds plus the longest chain of stages behind it: the highest starts first


@dataclass
class Job:
    stage: Stage
    process: subprocess.Popen
    error: str = ""  # the stage's error line, if it printed one
    lock_failed: bool = False
    ran: bool = False  # DVC started its command
    attempt: int = 0
    started: float = 0.0  # time.monotonic() at its start


def stage_command(command: str | list[str]) -> tuple[str, list[str]]:
    """('train', [its arguments]) of a stage's `python -m pipeline train ...` command; ('', []) else."""
    argv = shlex.split(command if isinstance(command, str) else " ".join(command))
    if len(argv) >= 4 and argv[1:3] == ["-m", "pipeline"] and os.path.basename(argv[0]).startswith("python"):
        return argv[3], argv[4:]
    return "", []


def stage_threads(command: str | list[str], params: Params | None, auto_threads: int) -> tuple[int, bool]:
    """The threads a stage's command computes with, and whether it is a TensorFlow stage."""
    module, arguments = stage_command(command)
    if module == "search" and params is not None and params.experiment_search:
        return compute.available_cores(), True  # hours of trainings one after another, on every core
    if module not in TENSORFLOW_STAGES or len(arguments) < 2:
        return 1, False
    dataset, design = arguments[:2]
    setting = params.train_settings(design, dataset).threads
    return (auto_threads if setting == compute.AUTO else int(setting)), True


def estimated_seconds(command: str | list[str], params: Params | None) -> float:
    """How long a stage is expected to run: a training by the last one on record, the rest short."""
    module, arguments = stage_command(command)
    if module != "train" or params is None or len(arguments) < 2:
        return SHORT_STAGE_SECONDS
    dataset, design = arguments[:2]
    return params.train_settings(design, dataset).epochs * recorded_epoch_seconds(dataset, design)


def recorded_epoch_seconds(dataset: str, design: str) -> float:
    """Seconds per epoch of the design's last training on the dataset (any seed's train.json), else a guess."""
    for record in sorted(RunPaths(dataset, design, 0).metrics_dir.parent.glob("seed_*/train.json")):
        try:
            metrics = json.loads(record.read_text())
            return float(metrics["train_seconds"]) / int(metrics["epochs_run"])
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            continue  # unreadable or an empty run: the next seed's, or the guess
    return UNKNOWN_EPOCH_SECONDS


def stale_stages(targets: Sequence[str]) -> list[tuple[str, str, set[str]]]:
    """(name, command, upstream stages among these) of every stage to run, in DVC's order.

    A stage runs if DVC's status says it changed or a stage upstream of it runs. With targets,
    only they and the stages upstream of them are considered, as `dvc repro TARGET` does; a
    target may be a stage (`train@mnist-lenet5_modern-42`) or a group (`train`).
    """
    import networkx as nx
    from dvc.repo import Repo, lock_repo

    # One lock and one index for both questions; like the stages' commands, wait for a lock
    # another DVC command holds (the CLI's --wait-for-lock).
    with Repo(_wait_for_lock=True) as repo, lock_repo(repo):
        graph = repo.index.graph  # edges go from a stage to the stages it depends on
        stages = {stage.addressing: stage for stage in graph}
        selected = set(stages)
        if targets:
            chosen = {name for target in targets for name in _matching(target, stages)}
            selected = chosen | {up.addressing for name in chosen for up in nx.descendants(graph, stages[name])}
        changed = set(repo.status(targets=sorted(selected) if targets else None))
    order = [stage.addressing for stage in reversed(list(nx.topological_sort(graph)))]  # upstream first
    run = [
        name
        for name in order
        if name in selected
        and (name in changed or any(up.addressing in changed for up in nx.descendants(graph, stages[name])))
    ]
    return [
        (name, stages[name].cmd, {up.addressing for up in graph.successors(stages[name])} & set(run)) for name in run
    ]


def plan(stale: list[tuple[str, str, set[str]]], params: Params | None, cores: int) -> tuple[list[Stage], int]:
    """The stale stages with their needs, and the threads `train.threads: auto` gets: the cores
    divided among the trainings to run, at most one per core."""
    trainings = sum(stage_command(command)[0] == "train" for _, command, _ in stale)
    auto_threads = max(1, cores // max(1, min(trainings, cores)))
    stages = []
    for name, command, upstream in stale:
        threads, tensorflow = stage_threads(command, params, auto_threads)
        stages.append(
            Stage(
                name,
                upstream,
                min(threads, cores),
                tensorflow and gpu_present(),
                stage_command(command)[0] == "train",
                estimated_seconds(command, params),
            )
        )
    for stage in reversed(stages):  # upstream first in `stale`: every stage behind this one is done
        behind = [other.priority for other in stages if stage.name in other.upstream]
        stage.priority = stage.seconds + max(behind, default=0.0)
    return stages, auto_threads


def _matching(target: str, stages: dict) -> list[str]:
    names = [name for name in stages if name == target or name.split("@")[0] == target]
    if not names:
        raise UserError(f"{target}: no such stage or stage group in dvc.yaml; `dvc stage list` shows them")
    return names


class Runner:
    """Runs planned stages, each as soon as its upstream stages succeeded and its threads fit."""

    def __init__(self, stages: list[Stage], cores: int, env: dict[str, str], out: IO[str] = sys.stdout) -> None:
        self.pending = list(stages)
        self.cores, self.env, self.out = cores, env, out
        self.running: dict[str, Job] = {}
        self.done: set[str] = set()
        self.failed: Job | None = None
        self.finished: queue.Queue[Job] = queue.Queue()
        self.print_lock = threading.Lock()
        self.width = max((len(stage.name) for stage in stages), default=0)
        self.lock_file_updated = False

    def ready(self) -> list[Stage]:
        """The stages whose upstream stages succeeded, the longest chain of work behind first."""
        return sorted((stage for stage in self.pending if stage.upstream <= self.done), key=lambda s: -s.priority)

    def startable(self, now: float) -> list[Stage]:
        """The ready stages to start now, in order. The first one whose threads (or GPU turn) are
        not free waits for them; a stage after a waiting one starts only if it is expected to end
        by the time that one can start, so a two-thread training is not overtaken for long."""
        busy = [(job.started + job.stage.seconds, job.stage) for job in self.running.values()]
        chosen: list[Stage] = []
        waiting_until: float | None = None
        for stage in self.ready():
            fits = sum(other.threads for _, other in busy) + stage.threads <= self.cores and not (
                stage.gpu and any(other.gpu for _, other in busy)
            )
            if fits and (waiting_until is None or now + stage.seconds <= waiting_until):
                chosen.append(stage)
                busy.append((now + stage.seconds, stage))
            elif not fits and waiting_until is None:
                waiting_until = self.freed_at(stage, busy, now)
        return chosen

    def freed_at(self, stage: Stage, busy: list[tuple[float, Stage]], now: float) -> float:
        """When the busy stages, each with its expected end, will have freed what `stage` needs."""
        free = self.cores - sum(other.threads for _, other in busy)
        gpu_free = not (stage.gpu and any(other.gpu for _, other in busy))
        when = now
        for end, other in sorted(busy, key=lambda item: item[0]):
            if free >= stage.threads and gpu_free:
                break
            free, gpu_free, when = free + other.threads, gpu_free or other.gpu, max(when, end)
        return when

    def run(self) -> int:
        while (self.pending and not self.failed) or self.running:
            if not self.failed:
                for stage in self.startable(time.monotonic()):
                    self.pending.remove(stage)
                    self.start(stage)
            if not self.running:  # nothing runs and nothing can start: an upstream stage was never planned
                break
            self.collect(self.finished.get())
        if self.lock_file_updated:
            self.say("dvc.lock changed: commit it and the outputs git tracks (`git status` lists them)")
        return 1 if self.failed else 0

    @staticmethod
    def command(stage: str) -> list[str]:
        return ["dvc", "--wait-for-lock", "repro", "--single-item", stage]

    def start(self, stage: Stage, attempt: int = 0) -> None:
        process = subprocess.Popen(
            self.command(stage.name),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        job = Job(stage, process, attempt=attempt, started=time.monotonic())
        self.running[stage.name] = job
        threading.Thread(target=self.follow, args=(job,), daemon=True).start()

    def follow(self, job: Job) -> None:
        """Echo a job's output, prefixed, and note what it says; report the job when it ends."""
        assert job.process.stdout is not None
        for line in job.process.stdout:
            line = line.rstrip("\n")
            if line.startswith("Running stage"):
                job.ran = True
            if LOCK_FAILURE in line:
                job.lock_failed = True
            if line.startswith("error:") or (line.startswith("ERROR:") and not job.error):
                job.error = line  # the stage's own error line wins over DVC's summary of it
            if line.strip().startswith(DVC_HINTS):
                self.lock_file_updated = True
            if line.strip().startswith(DVC_HINTS) or not line.strip():
                continue
            self.say(f"{job.stage.name:<{self.width}} | {line}")
        job.process.wait()
        self.finished.put(job)

    def collect(self, job: Job) -> None:
        del self.running[job.stage.name]
        if job.process.returncode == 0:
            self.done.add(job.stage.name)
        elif job.lock_failed and not job.ran and job.attempt < LOCK_RETRIES:
            delay = min(LOCK_BACKOFF_MAX, 0.5 * 2**job.attempt)
            self.say(f"{job.stage.name:<{self.width}} | DVC's lock is taken: retrying in {delay:.1f} s")
            time.sleep(delay)
            self.start(job.stage, job.attempt + 1)
        elif self.failed is None:
            job.error = job.error or f"dvc repro exited with status {job.process.returncode}"
            self.failed = job

    def say(self, line: str) -> None:
        with self.print_lock:
            print(line, file=self.out, flush=True)


PARAMS = False  # read only when a TensorFlow stage is to run (its threads and expected length)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-j", "--jobs", default="auto", help="the cores to fill: auto (the cores this process may use) or a number"
    )
    parser.add_argument("targets", nargs="*", help="stages or stage groups (default: every stage)")


def main(args: argparse.Namespace, params: None) -> int:
    from dvc.exceptions import DvcException

    if args.jobs != "auto" and not (args.jobs.isdigit() and int(args.jobs) >= 1):
        raise UserError(f"-j {args.jobs}: must be auto or a positive number of threads")
    cores = compute.available_cores() if args.jobs == "auto" else int(args.jobs)
    try:
        stale = stale_stages(args.targets)
    except DvcException as error:
        raise UserError(f"dvc.yaml: {error}") from None
    if not stale:
        print("Data and pipelines are up to date.")
        return 0
    tensorflow = any(stage_command(command)[0] in TENSORFLOW_STAGES for _, command, _ in stale)
    stages, auto_threads = plan(stale, load_params() if tensorflow else None, cores)
    print(f"repro: {len(stages)} stages to run, up to {cores} threads at once", flush=True)
    env = {**os.environ, compute.AUTO_THREADS_VARIABLE: str(auto_threads)}
    started = time.perf_counter()
    runner = Runner(stages, cores, env)
    try:
        status = runner.run()
    except KeyboardInterrupt:  # the stages got the terminal's Ctrl-C too: they stop (a training keeps its checkpoint)
        for job in runner.running.values():
            job.process.wait()
        return 130
    print(f"repro: {'failed' if status else 'done'} after {time.perf_counter() - started:.0f} s", flush=True)
    if runner.failed:
        print(f"error: stage {runner.failed.stage.name} failed: {runner.failed.error}", file=sys.stderr)
    return status
