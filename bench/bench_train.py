"""Benchmark: the pipeline's train stage vs a plain Keras script, and MLflow's cost.

Why: wrapping Keras in DVC stages and MLflow tracking must not cost users speed. Each run is
a fresh process on the same normalized data, design and batch size, in a scratch copy of the
project (its own MLflow store); contenders alternate round by round:

- throughput, for each design, `--epochs` epochs: ``stage``, i.e.
  ``python -m pipeline train <dataset> <design>`` exactly as `dvc repro` runs it (tracking
  on), vs ``plain``, what a user writes by hand: load the arrays, build the model,
  ``model.fit(x, y, batch_size, epochs, validation_data)`` (bench/plain_keras_train.py), with
  TensorFlow's defaults; and ``plain_onednn``, the same script on the oneDNN kernels the
  stage turns on (pipeline/__init__.py), so ``stage / plain_onednn`` is the wrapper's own cost
  and ``stage / plain`` what a user gains. Images per second of ``model.fit`` wall time
  (tracing included, as a user waits for it).
  The achieved training FLOP/s (3 x 2 x MACs per image, forward + backward) is reported as
  a fraction of the machine's peak, measured with a large float32 matmul.
- tracking overhead, for the first design at the params' own epochs (what `dvc repro`
  runs): the train stage's whole wall time with MLflow tracking vs with
  ``PIPELINE_TRACKING=off``. MLflow's cost is mostly fixed (import, store), so it is
  measured against the training users actually run, not against a shortened one. Also
  reported: the difference in time spent outside ``model.fit``, which training-speed drift
  does not blur (per-epoch metric logging inside fit costs milliseconds); and the evaluate
  stage tracked vs not, since it logs the model (pipeline/tracking/client.py), so that MLflow's
  whole cost per (dataset, design) is on the record too.

Usage (from the repository root, after `dvc repro` has produced data/normalized/<dataset>):

    .venv/bin/python bench/bench_train.py [--dataset mnist] [--designs lenet5_modern student_b]
                                          [--epochs 2] [--rounds 2] [--overhead-rounds 1]

Prints the JSON result on stdout and a one-line summary per design on stderr, and writes
bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from scratch import ROOT, data_project, stage_env

sys.path.insert(0, str(ROOT))
from pipeline.core.paths import RunPaths  # noqa: E402
from pipeline.training.compute import available_cores  # noqa: E402

RESULT = ROOT / "bench" / "results" / "train.json"
SEED = yaml.safe_load((ROOT / "params.yaml").read_text())["experiments"]["seeds"][0]  # what a stage trains by default
PLAIN = ROOT / "bench" / "plain_keras_train.py"


def scratch_project(dataset: str, design: str, epochs: int | None) -> Path:
    """A throwaway project dir (params with `epochs` if given), the workspace's normalized data linked in.

    The stage trains on as many threads as plain Keras does by default (every core), so that
    they compare the same kernels on the same threads.
    """
    block = dict(yaml.safe_load((ROOT / "params.yaml").read_text())["models"][design])
    recipe = dict(block.get("train", {})) if epochs is None else {}  # given epochs: the same recipe for every contender
    block["train"] = {**recipe, "threads": available_cores()}
    changes = {"train.early_stopping_patience": 0, f"models.{design}": block}
    if epochs is not None:
        changes["train.epochs"] = epochs
    return data_project(dataset, changes, "bench-train-")


def run_stage(work: Path, dataset: str, design: str, tracked: bool) -> dict[str, float]:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipeline", "train", dataset, design],
        cwd=work,
        env=stage_env(work, tracked),
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    metrics = json.loads((work / RunPaths(dataset, design, SEED).metrics_dir / "train.json").read_text())
    return {
        "wall_seconds": wall,
        "fit_seconds": metrics["train_seconds"],
        "epochs": metrics["epochs_run"],
        "macs_per_image": metrics["macs_per_image"],
    }


def run_evaluate(work: Path, dataset: str, design: str, tracked: bool) -> float:
    """Wall seconds of the evaluate stage on the model the last run_stage trained."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pipeline", "evaluate", dataset, design],
        cwd=work,
        env=stage_env(work, tracked),
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def run_plain(work: Path, dataset: str, design: str, epochs: int, batch_size: int, onednn: bool) -> dict[str, float]:
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    env.update({"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"})
    if onednn:
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(PLAIN), str(work), dataset, design, str(epochs), str(batch_size)],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {"wall_seconds": time.perf_counter() - started, **json.loads(out.strip().splitlines()[-1])}


def peak_flops(size: int = 2048, repeats: int = 10) -> float:
    """float32 FLOP/s of a large matmul on all cores: the machine's practical peak.

    The faster of TensorFlow's two CPU kernel sets (its default, and oneDNN, which uses AVX2
    where the default build does not), so the fraction of peak is not flattered.
    """
    code = f"""
import time, tensorflow as tf
a = tf.random.normal(({size}, {size})); b = tf.random.normal(({size}, {size}))
(a @ b).numpy()
best = 0.0
for _ in range({repeats}):
    t = time.perf_counter(); (a @ b).numpy(); best = max(best, 2 * {size}**3 / (time.perf_counter() - t))
print(best)
"""
    best = 0.0
    for onednn in ("0", "1"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": onednn},
        ).stdout
        best = max(best, float(out.strip().splitlines()[-1]))
    return best


def throughput(
    dataset: str, design: str, epochs: int, rounds: int, batch_size: int, train_images: int, peak: float
) -> dict:
    work = scratch_project(dataset, design, epochs)
    runs: dict[str, list[dict]] = {"stage": [], "plain": [], "plain_onednn": []}
    try:
        for _ in range(rounds):
            runs["stage"].append(run_stage(work, dataset, design, tracked=True))
            runs["plain"].append(run_plain(work, dataset, design, epochs, batch_size, onednn=False))
            runs["plain_onednn"].append(run_plain(work, dataset, design, epochs, batch_size, onednn=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fit = {name: statistics.median(r["fit_seconds"] for r in rs) for name, rs in runs.items()}
    images_per_second = {name: train_images * epochs / seconds for name, seconds in fit.items()}
    macs = runs["stage"][0]["macs_per_image"]
    flops = images_per_second["stage"] * 6 * macs
    return {
        "images_per_second": images_per_second,
        "throughput_ratio_stage_vs_plain": images_per_second["stage"] / images_per_second["plain"],
        "throughput_ratio_stage_vs_plain_onednn": images_per_second["stage"] / images_per_second["plain_onednn"],
        "macs_per_image": macs,
        "training_gflops": flops / 1e9,
        "fraction_of_peak": flops / peak,
        "runs": runs,
    }


def tracking_overhead(dataset: str, design: str, rounds: int) -> dict:
    work = scratch_project(dataset, design, epochs=None)
    runs: dict[str, list[dict]] = {"tracked": [], "untracked": []}
    try:
        # Create the MLflow store and experiment first: a one-off cost of a project's first run.
        subprocess.run(
            [sys.executable, "-c", f"from pipeline.tracking.worker import experiment_id; experiment_id({dataset!r})"],
            cwd=work,
            env=stage_env(work, tracked=True),
            check=True,
            capture_output=True,
        )
        for _ in range(rounds):
            for name, tracked in (("tracked", True), ("untracked", False)):
                run = run_stage(work, dataset, design, tracked)
                runs[name].append({**run, "evaluate_wall_seconds": run_evaluate(work, dataset, design, tracked)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = {name: statistics.median(r["wall_seconds"] for r in rs) for name, rs in runs.items()}
    evaluate = {name: statistics.median(r["evaluate_wall_seconds"] for r in rs) for name, rs in runs.items()}
    # Training speed drifts by 10-15% between runs on a shared machine, more than tracking costs;
    # the time outside model.fit (imports, store, logging the model) does not drift with it.
    outside_fit = {
        name: statistics.median(r["wall_seconds"] - r["fit_seconds"] for r in rs) for name, rs in runs.items()
    }
    return {
        "design": design,
        "epochs": runs["tracked"][0]["epochs"],
        "stage_wall_seconds": wall,
        "tracking_overhead": wall["tracked"] / wall["untracked"] - 1,
        "seconds_outside_fit": outside_fit,
        "tracking_overhead_outside_fit": (outside_fit["tracked"] - outside_fit["untracked"]) / wall["untracked"],
        "evaluate_wall_seconds": evaluate,
        "tracking_seconds_per_design": outside_fit["tracked"]
        - outside_fit["untracked"]
        + evaluate["tracked"]
        - evaluate["untracked"],
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--designs", nargs="+", default=["lenet5_modern", "student_b"])
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the throughput runs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--overhead-rounds", type=int, default=1, help="0 skips the tracking-overhead runs")
    args = parser.parse_args()
    if not (ROOT / "data" / "normalized" / args.dataset / "train.npz").is_file():
        sys.exit(f"data/normalized/{args.dataset}: missing; run `dvc repro normalize@{args.dataset}` first")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    batch_size = params["train"]["batch_size"]
    train_images = int(
        json.loads((ROOT / "data/normalized" / args.dataset / "meta.json").read_text())["sizes"]["train"]
    )
    peak = peak_flops()
    result = {
        "benchmark": "train stage vs plain Keras, and MLflow tracking overhead",
        "dataset": args.dataset,
        "train_images": train_images,
        "epochs": args.epochs,
        "batch_size": batch_size,
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "peak_matmul_gflops": peak / 1e9},
        "designs": {},
    }
    for design in args.designs:
        summary = throughput(args.dataset, design, args.epochs, args.rounds, batch_size, train_images, peak)
        result["designs"][design] = summary
        ips = summary["images_per_second"]
        print(
            f"{design}: stage {ips['stage']:.0f} img/s vs plain Keras {ips['plain']:.0f} img/s "
            f"(x{summary['throughput_ratio_stage_vs_plain']:.2f}), on oneDNN too {ips['plain_onednn']:.0f} img/s "
            f"(x{summary['throughput_ratio_stage_vs_plain_onednn']:.2f}); {summary['training_gflops']:.1f} GFLOP/s = "
            f"{summary['fraction_of_peak']:.1%} of peak {peak / 1e9:.0f}",
            file=sys.stderr,
        )
    if args.overhead_rounds:
        overhead = tracking_overhead(args.dataset, args.designs[0], args.overhead_rounds)
        result["tracking"] = overhead
        wall = overhead["stage_wall_seconds"]
        print(
            f"{overhead['design']}, {overhead['epochs']} epochs: stage {wall['tracked']:.1f} s with MLflow vs "
            f"{wall['untracked']:.1f} s without ({overhead['tracking_overhead']:+.1%}); outside model.fit "
            f"{overhead['seconds_outside_fit']['tracked']:.1f} s vs "
            f"{overhead['seconds_outside_fit']['untracked']:.1f} s "
            f"({overhead['tracking_overhead_outside_fit']:+.1%} of the untracked stage); evaluate "
            f"{overhead['evaluate_wall_seconds']['tracked']:.1f} s vs "
            f"{overhead['evaluate_wall_seconds']['untracked']:.1f} s; "
            f"MLflow's seconds per design (train outside fit + evaluate) {overhead['tracking_seconds_per_design']:.1f}",
            file=sys.stderr,
        )
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
