"""Benchmark: train.precision mixed_bfloat16 against float32, speed and accuracy, on the machine at hand.

Why: bfloat16 halves the bytes every layer moves and, on CPUs with bfloat16 instructions
(AMX: lscpu flag amx_bf16; AVX-512 BF16: avx512_bf16), doubles or more what a core computes
per cycle; without them TensorFlow emulates it and it is slower. The speed-up is machine
specific, and the accuracy cost (3 significant digits in activations and gradients) is
design specific: both are measured here, per (dataset, design).

For each `--runs` entry DATASET:DESIGN:EPOCHS, in a scratch project holding the workspace's
data/normalized/DATASET (run `dvc repro normalize@DATASET` first), the train and evaluate
stages run as `dvc repro` runs them (tracking off), float32 and mixed_bfloat16 alternating
round by round, on --threads threads (default: every core, as a training alone). Reported:
the median epoch time (an epoch's first, traced, epoch left out), best validation accuracy
and test accuracy (the same in every round: same params, same threads).

Usage: .venv/bin/python bench/bench_precision.py [--runs mnist:lenet5_modern:10 gtsrb:student_gtsrb:3]
                                                 [--rounds 2] [--threads N]
Writes bench/results/precision.json and prints a line per run.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import yaml
from scratch import ROOT, data_project, load, stage_env, write_result

RESULT = ROOT / "bench" / "results" / "precision.json"
PRECISIONS = ("float32", "mixed_bfloat16")


def train_and_evaluate(work: Path, dataset: str, design: str, precision: str) -> dict:
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["models"][design]["train"]["precision"] = precision
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("train", "evaluate"):
        subprocess.run(
            [sys.executable, "-m", "pipeline", stage, dataset, design],
            cwd=work,
            env=stage_env(work, tracked=False),
            check=True,
            capture_output=True,
        )
    seed = params["experiments"]["seeds"][0]
    metrics = work / "metrics" / dataset / design / f"seed_{seed}"
    with open(work / "plots" / "history" / dataset / design / f"seed_{seed}.csv", encoding="utf-8") as handle:
        epochs = [float(row["seconds"]) for row in csv.DictReader(handle)]
    trained = json.loads((metrics / "train.json").read_text())
    evaluated = json.loads((metrics / "evaluate.json").read_text())
    return {
        "epoch_seconds": epochs,
        "best_val_accuracy": trained["best_val_accuracy"],
        "test_accuracy": evaluated["test_accuracy"],
        "predict_latency_ms": evaluated["predict_latency_ms"],
        "predict_images_per_second": evaluated["predict_images_per_second"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["mnist:lenet5_modern:10", "gtsrb:student_gtsrb:3"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="default: every core")
    args = parser.parse_args()
    from pipeline.training.compute import BF16_FLAGS, available_cores, cpu_flags

    threads = args.threads or available_cores()
    result = {
        "benchmark": "mixed_bfloat16 vs float32",
        "cpus": available_cores(),
        "threads": threads,
        "bf16_flags": sorted(cpu_flags() & set(BF16_FLAGS)),
        "rounds": args.rounds,
        "load_average": {"before": load()},
        "runs": {},
    }
    for entry in args.runs:
        dataset, design, epochs = entry.split(":")
        if not (ROOT / "data" / "normalized" / dataset / "train.npz").is_file():
            sys.exit(f"data/normalized/{dataset}: missing; run `dvc repro normalize@{dataset}` first")
        recipe = yaml.safe_load((ROOT / "params.yaml").read_text())["models"][design].get("train", {})
        work = data_project(
            dataset,
            {f"models.{design}.train": {**recipe, "epochs": int(epochs), "threads": threads}},
            "bench-precision-",
        )
        runs: dict[str, list[dict]] = {precision: [] for precision in PRECISIONS}
        try:
            for _ in range(args.rounds):
                for precision in PRECISIONS:
                    runs[precision].append(train_and_evaluate(work, dataset, design, precision))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        epoch = {
            p: statistics.median(s for r in rs for s in r["epoch_seconds"][1:] or r["epoch_seconds"])
            for p, rs in runs.items()
        }
        summary = {
            "epochs": int(epochs),
            "epoch_seconds_median": epoch,
            "speedup": epoch["float32"] / epoch["mixed_bfloat16"],
            "best_val_accuracy": {p: rs[0]["best_val_accuracy"] for p, rs in runs.items()},
            "test_accuracy": {p: rs[0]["test_accuracy"] for p, rs in runs.items()},
            "predict_latency_ms": {p: statistics.median(r["predict_latency_ms"] for r in rs) for p, rs in runs.items()},
            "runs": runs,
        }
        result["runs"][f"{dataset}/{design}"] = summary
        print(
            f"{design} on {dataset}, {epochs} epochs, {threads} threads: epoch {epoch['float32']:.2f} s float32, "
            f"{epoch['mixed_bfloat16']:.2f} s mixed_bfloat16 (x{summary['speedup']:.2f}); test accuracy "
            f"{summary['test_accuracy']['float32']:.4f} vs {summary['test_accuracy']['mixed_bfloat16']:.4f}",
            file=sys.stderr,
            flush=True,
        )
    result["load_average"]["after"] = load()
    write_result(RESULT, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
