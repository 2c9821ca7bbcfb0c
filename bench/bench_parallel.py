"""Benchmark: seeds trained side by side (`make repro`'s runner) against one after another (`dvc repro`).

Why: a LeNet-sized training keeps one core busy, and `dvc repro` runs trainings one by one
(issue 19's target: 3 seeds of LeNet-5 modern on MNIST train at least 1.5x faster side by
side). In a scratch copy of the project whose data stages are done (MNIST from
../shared/datasets), the three train stages `train@mnist-lenet5_modern-{1,2,3}` are run,
tracking on, as a user runs them:

- ``one_after_another``: `dvc repro train`, each training on every core (train.threads =
  the cores: the fastest a training alone gets);
- ``one_after_another_1_thread``: `dvc repro train` with the shipped train.threads 1;
- ``side_by_side``: `python -m pipeline repro train` (what `make repro` runs), train.threads 1:
  one training per core, in waves (on 2 cores the third seed runs alone).

Contenders alternate, round by round, each from the same state (the trainings' outputs,
their dvc.lock entries and DVC's run cache removed); the speed-up is the ratio of median wall
times. The same params with the same threads must give the same metrics whatever runs beside:
each seed's train.json of ``side_by_side`` is compared with ``one_after_another_1_thread``'s.

10 epochs by default: LeNet-5 modern's MNIST recipe (with 3, start-up is half of each stage).

Usage: .venv/bin/python bench/bench_parallel.py [--epochs 10] [--rounds 2] [--seeds 1 2 3]
Writes bench/results/parallel.json and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratch import ROOT, env, git_copy, load, set_params, write_result

RESULT = ROOT / "bench" / "results" / "parallel.json"
DESIGN = "lenet5_modern"
VARYING = ("train_seconds", "images_per_second")  # measurements, not results


def contenders(cores: int) -> dict[str, tuple[list[str], int]]:
    """name -> (command, train.threads)."""
    return {
        "one_after_another": (["dvc", "repro", "train"], cores),
        "one_after_another_1_thread": (["dvc", "repro", "train"], 1),
        "side_by_side": ([sys.executable, "-m", "pipeline", "repro", "train"], 1),
    }


def reset(work: Path, built_lock: str, threads: int) -> None:
    """Back to the state after the data stages: no training done, none in DVC's run cache."""
    for folder in ("models", "metrics", "plots", "reports", ".checkpoints", ".dvc/cache/runs"):
        shutil.rmtree(work / folder, ignore_errors=True)
    (work / "dvc.lock").write_text(built_lock)
    set_params(work, {"train.threads": threads})


def run(work: Path, command: list[str], seeds: list[int]) -> dict:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=work, env=env(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    metrics = {
        seed: json.loads((work / f"metrics/mnist/{DESIGN}/seed_{seed}/train.json").read_text()) for seed in seeds
    }
    return {"wall_seconds": wall, "metrics": metrics}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    from pipeline.training.compute import available_cores

    cores = available_cores()
    load_before = load()
    work = Path(tempfile.mkdtemp(prefix="bench-parallel-"))
    try:
        git_copy(
            work,
            {
                "experiments.datasets": ["mnist"],
                "experiments.models": [DESIGN],
                "experiments.seeds": args.seeds,
                "train.epochs": args.epochs,
            },
        )
        subprocess.run(["dvc", "repro", "normalize@mnist"], cwd=work, env=env(), check=True, capture_output=True)
        built_lock = (work / "dvc.lock").read_text()
        runs: dict[str, list[dict]] = {name: [] for name in contenders(cores)}
        for _ in range(args.rounds):
            for name, (command, threads) in contenders(cores).items():
                reset(work, built_lock, threads)
                runs[name].append(run(work, command, args.seeds))
                print(f"{name}: {runs[name][-1]['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = {name: statistics.median(r["wall_seconds"] for r in rs) for name, rs in runs.items()}

    def results(run_: dict) -> dict:
        return {seed: {k: v for k, v in m.items() if k not in VARYING} for seed, m in run_["metrics"].items()}

    identical = all(results(a) == results(b) for a in runs["side_by_side"] for b in runs["one_after_another_1_thread"])
    result = {
        "benchmark": "seeds side by side vs one after another",
        "cpus": cores,
        "design": DESIGN,
        "dataset": "mnist",
        "seeds": args.seeds,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "wall_seconds_median": wall,
        "speedup_vs_one_after_another": wall["one_after_another"] / wall["side_by_side"],
        "speedup_vs_one_after_another_1_thread": wall["one_after_another_1_thread"] / wall["side_by_side"],
        "identical_metrics_same_threads": identical,
        "load_average": {"before": load_before, "after": load()},
        "runs": runs,
    }
    write_result(RESULT, result)
    print(
        f"{len(args.seeds)} seeds of {DESIGN} on MNIST, {args.epochs} epochs: side by side "
        f"{wall['side_by_side']:.1f} s, one after another {wall['one_after_another']:.1f} s "
        f"(x{result['speedup_vs_one_after_another']:.2f}), one after another on 1 thread "
        f"{wall['one_after_another_1_thread']:.1f} s (x{result['speedup_vs_one_after_another_1_thread']:.2f}); "
        f"same metrics for the same threads: {identical}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
