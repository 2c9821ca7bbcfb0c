"""Benchmark: what DVC orchestration costs. No-op `dvc repro`, and the default `dvc repro`.

- default: `dvc repro` of the shipped params.yaml from scratch, in a scratch copy of the
  repository (data from ../shared/datasets via PIPELINE_DATA_MIRROR), with the wall time
  and peak RSS of every stage (its process tree, tracking worker included), sampled every
  0.2 s;
- no-op: `dvc repro` again in that copy, now up to date (median of 5): the price of asking
  "is anything stale?".

Usage (from the repository root):

    .venv/bin/python bench/bench_pipeline.py [--no-op-only]

`--no-op-only` skips the default run and measures the no-op in this repository, which must
then be up to date.

Prints the JSON result on stdout and a one-line summary on stderr, and writes
bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "pipeline.json"
MIRROR = ROOT.parent / "shared" / "datasets"
BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "3",
            "PIPELINE_DATA_MIRROR": str(MIRROR)}


def no_op_seconds(project: Path, repeats: int = 5) -> list[float]:
    status = subprocess.run(["dvc", "status", "--json"], cwd=project, env=env(), capture_output=True, text=True)
    if json.loads(status.stdout or "{}"):
        sys.exit(f"{project} is not up to date: run `dvc repro` first, then measure the no-op")
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(["dvc", "repro"], cwd=project, env=env(), check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    return seconds


class StageSampler(threading.Thread):
    """Samples the RSS of every `python -m pipeline.<stage> ...` process under `root_pid`."""

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
                module = cmd[2] if len(cmd) >= 3 and cmd[1] == "-m" else ""
                # A stage's tracking worker (pipeline.tracking) is its child: counted in the stage's RSS.
                if module.startswith("pipeline.") and module != "pipeline.tracking":
                    name = module.removeprefix("pipeline.") + "@" + "-".join(cmd[3:])
                    stage = self.stages.setdefault(name, {"first_seen": now, "peak_rss_mib": 0.0})
                    stage["last_seen"] = now
                    stage["peak_rss_mib"] = max(stage["peak_rss_mib"], rss / 2**20)
            time.sleep(0.2)


def default_repro() -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        for name in files.split():
            if name == "dvc.lock":
                continue
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)
        for command in (["git", "init", "-q"], ["git", "add", "-A"],
                        ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-qm",
                         "bench"]):
            subprocess.run(command, cwd=work, check=True, capture_output=True)
        started = time.perf_counter()
        process = subprocess.Popen(["dvc", "repro"], cwd=work, env=env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        sampler = StageSampler(process.pid)
        sampler.start()
        _, errors = process.communicate()
        wall = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
        if process.returncode:
            sys.exit(f"dvc repro failed:\n{errors[-3000:]}")
        stages = {name: {"seconds": s["last_seen"] - s["first_seen"], "peak_rss_mib": s["peak_rss_mib"]}
                  for name, s in sampler.stages.items()}
        # what the run trained to: a speed-up must not cost accuracy
        accuracy = {f"{path.parts[-3]}/{path.parts[-2]}": json.loads(path.read_text())["test_accuracy"]
                    for path in sorted(work.glob("metrics/*/*/evaluate.json"))}
        return {"wall_seconds": wall, "peak_rss_mib": max(s["peak_rss_mib"] for s in stages.values()),
                "stages": stages, "test_accuracy": accuracy, "no_op_seconds": no_op_seconds(work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-op-only", action="store_true", help="only measure the no-op repro, in this repository")
    args = parser.parse_args()
    result: dict = {"benchmark": "DVC orchestration", "cpus": os.cpu_count()}
    if args.no_op_only:
        no_op = no_op_seconds(ROOT)
    else:
        result["default_repro"] = default_repro()
        no_op = result["default_repro"].pop("no_op_seconds")
    result.update(no_op_repro_seconds=statistics.median(no_op), no_op_repro_all=no_op)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    line = f"no-op dvc repro {result['no_op_repro_seconds']:.2f} s"
    if "default_repro" in result:
        full = result["default_repro"]
        line += f"; default dvc repro {full['wall_seconds'] / 60:.1f} min, peak RSS {full['peak_rss_mib']:.0f} MiB"
    print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
