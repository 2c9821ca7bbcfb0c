"""Benchmark: what the tracking worker process saves a stage, against MLflow loaded in the stage itself.

Why: every stage that logs starts a worker process (pipeline/tracking/worker.py) that imports MLflow and
opens the store while the stage imports TensorFlow. The alternative is one process: import Keras, then
MLflow, then open the run. Each measured run is a fresh child process; the two ways alternate; the median
over the repeats is compared. Measured, per way, from the moment Keras is imported (what a train or
evaluate stage needs first) to the moment its MLflow run is open:

- ``worker``: ``tracking.warm_up()`` first, then ``import keras``, then ``tracking.stage_run(...)``;
- ``inline``: ``import keras``, then ``import mlflow``, the store, the experiment and ``start_run``.

Both use a copy of a fresh SQLite store in a temporary folder (the schema made once, before timing).

Usage (from the repository root)::

    .venv/bin/python bench/bench_tracking_worker.py [--repeats 5]

Prints the JSON result and writes it to bench/results/tracking_worker.json.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "tracking_worker.json"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHILD = {
    "worker": """
import time, types
started = time.perf_counter()
from pipeline import tracking
tracking.warm_up()
import keras
imported = time.perf_counter()
with tracking.stage_run(types.SimpleNamespace(seed=0), "mnist", "bench") as run:
    run.id
opened = time.perf_counter()
print(opened - started, opened - imported)
""",
    "inline": """
import time
started = time.perf_counter()
import keras
imported = time.perf_counter()
import mlflow
experiment = mlflow.set_experiment("mnist")
with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="bench"):
    pass
opened = time.perf_counter()
print(opened - started, opened - imported)
""",
}


def main() -> int:
    from pipeline.training import compute

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as work:
        store = Path(work, "template.db")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
        env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "TF_CPP_MIN_LOG_LEVEL": "3"}
        subprocess.run([sys.executable, "-c", "import mlflow; mlflow.set_experiment('mnist')"], env=env, check=True)
        times: dict[str, list[tuple[float, float]]] = {way: [] for way in CHILD}
        for repeat in range(args.repeats):
            for way, code in CHILD.items():
                copy = Path(work, f"{way}-{repeat}.db")
                shutil.copy2(store, copy)
                env["MLFLOW_TRACKING_URI"] = f"sqlite:///{copy}"
                out = subprocess.run([sys.executable, "-c", code], env=env, cwd=work, check=True, capture_output=True)
                total, after_keras = map(float, out.stdout.split()[-2:])
                times[way].append((total, after_keras))
                print(
                    f"{way} {repeat + 1}/{args.repeats}: {total:.2f} s, {after_keras:.2f} s after keras",
                    file=sys.stderr,
                )
    medians = {
        way: {"total_s": statistics.median(t for t, _ in rows), "after_keras_s": statistics.median(a for _, a in rows)}
        for way, rows in times.items()
    }
    result = {
        "machine": f"{compute.cpu_model()}, {os.cpu_count()} cores",
        "repeats": args.repeats,
        "median": medians,
        "saved_per_stage_s": medians["inline"]["total_s"] - medians["worker"]["total_s"],
        "runs": times,
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
