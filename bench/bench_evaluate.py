"""Benchmark: what an evaluate stage costs, and what calibration and int8 add to it, for one or more checkouts
of the project side by side (the same trained model and data, so code is the only difference).

Each measured run is `python -m pipeline evaluate DATASET DESIGN --seed SEED` as DVC runs it, in a fresh
process with tracking off; the checkouts alternate, and the median over the repeats is compared. Per run:
the stage's wall time (start-up included: Python, TensorFlow, loading the model), and from its
evaluate.json the work after start-up (`evaluate_seconds`) and its calibration and int8 parts.

A checkout other than this one needs this one's `data/` and `models/` (symlinks do), and writes its own
metrics/ and plots/; this one's are rewritten too, so run `dvc repro` afterwards.

Usage (from the repository root, after `dvc repro` has trained the model)::

    .venv/bin/python bench/bench_evaluate.py [--dataset gtsrb] [--design student_gtsrb] [--repeats 3] [CHECKOUT ...]

Prints the JSON result and writes it to bench/results/evaluate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "evaluate.json"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
PARTS = ("evaluate_seconds", "calibration_seconds", "int8_seconds")


def measure(checkout: Path, dataset: str, design: str, seed: int) -> dict[str, float]:
    env = {**os.environ, "PIPELINE_TRACKING": "off", "PYTHONPATH": str(checkout), "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "pipeline", "evaluate", dataset, design, "--seed", str(seed)]
    started = time.perf_counter()
    subprocess.run(command, cwd=checkout, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    metrics = json.loads((checkout / "metrics" / dataset / design / f"seed_{seed}" / "evaluate.json").read_text())
    return {"wall_s": wall} | {part: metrics[part] for part in PARTS}


def main() -> int:
    from pipeline.training import compute

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="*", type=Path, default=[ROOT])
    parser.add_argument("--dataset", default="gtsrb")
    parser.add_argument("--design", default="student_gtsrb")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {str(checkout): [] for checkout in args.checkouts}
    for repeat in range(args.repeats):
        for checkout in args.checkouts:
            run = measure(checkout.resolve(), args.dataset, args.design, args.seed)
            runs[str(checkout)].append(run)
            shown = ", ".join(f"{key} {value:.2f}" for key, value in run.items())
            print(f"{checkout} {repeat + 1}/{args.repeats}: {shown}", file=sys.stderr)
    medians = {}
    for checkout, rows in runs.items():
        median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        added = median["calibration_seconds"] + median["int8_seconds"]
        median["added_over_rest_of_work"] = added / (median["evaluate_seconds"] - added)
        median["added_over_rest_of_stage"] = added / (median["wall_s"] - added)
        medians[checkout] = median
    result = {
        "machine": f"{compute.cpu_model()}, {os.cpu_count()} cores",
        "dataset": args.dataset,
        "design": args.design,
        "seed": args.seed,
        "repeats": args.repeats,
        "median": medians,
        "runs": runs,
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["median"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
