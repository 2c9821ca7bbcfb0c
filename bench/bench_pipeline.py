"""Benchmark: what DVC orchestration costs. No-op `dvc repro`, and the default `make repro`.

- default: `make repro`'s command (`python -m pipeline repro`: the stages side by side, see
  pipeline/tools/repro.py) on the shipped params.yaml from scratch, in a scratch copy of the
  repository (data from ../shared/datasets via PIPELINE_DATA_MIRROR), with the wall time
  and peak RSS of every stage (its process tree, tracking worker included), sampled every
  0.2 s;
- no-op: `dvc repro` again in that copy, now up to date (median of 11): the price of asking
  "is anything stale?". Also timed, alternated with it: `dvc --version` (DVC's start-up),
  `dvc repro <first stage>` (a download: no upstream, so every stage is loaded and one is
  checked), which split the no-op into a fixed cost and a cost per stage checked, and the
  parallel runner's no-op (`python -m pipeline repro`: one status in-process, no stage
  started); and the CPU time of each no-op (wall above CPU is waiting).

Usage (from the repository root):

    .venv/bin/python bench/bench_pipeline.py [--no-op-only]

`--no-op-only` skips the default run and measures the no-op in this repository, which must
then be up to date; the default run's figures already in the results file are kept.

Prints the JSON result on stdout and a one-line summary on stderr, and writes
bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml
from scratch import ROOT, env, git_copy, load, write_result

RESULT = ROOT / "bench" / "results" / "pipeline.json"


def no_op(project: Path, repeats: int = 11) -> dict:
    status = subprocess.run(["dvc", "status", "--json"], cwd=project, env=env(), capture_output=True, text=True)
    if json.loads(status.stdout or "{}"):
        sys.exit(f"{project} is not up to date: run `dvc repro` first, then measure the no-op")
    stages = list(yaml.safe_load((project / "dvc.lock").read_text())["stages"])
    commands = {
        "repro": ["dvc", "repro"],
        "one_stage": ["dvc", "repro", stages[0]],
        "startup": ["dvc", "--version"],
        "runner": [sys.executable, "-m", "pipeline", "repro"],
    }
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: list[float] = []
    for _ in range(repeats):  # alternated, so that a slow spell of the machine hits all three alike
        for name, command in commands.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            subprocess.run(command, cwd=project, env=env(), check=True, capture_output=True)
            wall[name].append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if name == "repro":
                cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    median = {name: statistics.median(seconds) for name, seconds in wall.items()}
    return {
        "seconds": median["repro"],
        "all": wall["repro"],
        "cpu_seconds": statistics.median(cpu),
        "stages": len(stages),
        "startup_seconds": median["startup"],
        "one_stage_seconds": median["one_stage"],
        "per_stage_seconds": (median["repro"] - median["one_stage"]) / (len(stages) - 1),
        "runner_seconds": median["runner"],
        "runner_all": wall["runner"],
    }


class StageSampler(threading.Thread):
    """Samples the RSS of every `python -m pipeline <stage> ARGS` process under `root_pid`."""

    def __init__(self, root_pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(root_pid)
        self.stages: dict[str, dict[str, float]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                children = self.root.children(recursive=True)
            except psutil.Error:
                break
            now = time.perf_counter()
            for child in children:
                try:
                    cmd = child.cmdline()
                    rss = child.memory_info().rss + sum(c.memory_info().rss for c in child.children(recursive=True))
                except psutil.Error:
                    continue
                # A stage is `python -m pipeline <stage> ARGS`; its tracking worker (`python -m
                # pipeline.tracking.worker`) is its child, counted in the stage's RSS, not a stage.
                if len(cmd) >= 4 and cmd[1:3] == ["-m", "pipeline"]:
                    name = cmd[3] + "@" + "-".join(a for a in cmd[4:] if a != "--seed")
                    stage = self.stages.setdefault(name, {"first_seen": now, "peak_rss_mib": 0.0})
                    stage["last_seen"] = now
                    stage["peak_rss_mib"] = max(stage["peak_rss_mib"], rss / 2**20)
            time.sleep(0.2)


def default_repro() -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        git_copy(work)
        load_before = load()
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "repro"],
            cwd=work,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sampler = StageSampler(process.pid)
        sampler.start()
        output, _ = process.communicate()
        wall = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
        if process.returncode:
            sys.exit(f"python -m pipeline repro failed:\n{output[-3000:]}")
        stages = {
            name: {"seconds": s["last_seen"] - s["first_seen"], "peak_rss_mib": s["peak_rss_mib"]}
            for name, s in sampler.stages.items()
        }
        # what the run trained to: a speed-up must not cost accuracy
        accuracy = {
            "/".join(path.parts[-4:-1]): json.loads(path.read_text())["test_accuracy"]
            for path in sorted(work.glob("metrics/*/*/seed_*/evaluate.json"))
        }
        return {
            "command": "python -m pipeline repro",
            "wall_seconds": wall,
            "peak_rss_mib": max(s["peak_rss_mib"] for s in stages.values()),
            "stages": stages,
            "test_accuracy": accuracy,
            "load_average": {"before": load_before, "after": load()},
            "no_op": no_op(work),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-op-only", action="store_true", help="only measure the no-op repro, in this repository")
    args = parser.parse_args()
    result: dict = {"benchmark": "DVC orchestration", "cpus": os.cpu_count()}
    if args.no_op_only:
        previous = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
        if "default_repro" in previous:
            result["default_repro"] = previous["default_repro"]
        result["no_op_repro"] = no_op(ROOT)
    else:
        result["default_repro"] = default_repro()
        result["no_op_repro"] = result["default_repro"].pop("no_op")
    write_result(RESULT, result)
    print(json.dumps(result, indent=2))
    quick = result["no_op_repro"]
    line = (
        f"no-op dvc repro {quick['seconds']:.2f} s ({quick['startup_seconds']:.2f} s start-up, "
        f"{quick['per_stage_seconds'] * 1000:.0f} ms per stage x {quick['stages']})"
    )
    if "default_repro" in result:
        full = result["default_repro"]
        line += f"; default dvc repro {full['wall_seconds'] / 60:.1f} min, peak RSS {full['peak_rss_mib']:.0f} MiB"
    print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
