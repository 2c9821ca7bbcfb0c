"""Run every benchmark (`make bench`), then summarize bench/results/*.json in bench/RESULTS.md.

Each benchmark is its own script, printing a JSON result and a one-line summary; this runs
them one after another (never in parallel: they measure the same two cores) and writes the
summary with the machine it ran on. `--summary-only` rewrites RESULTS.md from the JSON files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
SCRIPTS = ("bench_reference_ops.py", "bench_gtsrb_decode.py", "bench_recipes.py", "bench_train.py", "bench_pipeline.py")


def machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = cpu
    return (f"{model}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, no GPU; "
            f"{platform.platform()}; Python {platform.python_version()}")


def summary() -> str:
    lines = ["# Benchmark results", "", f"Machine: {machine()}.", "",
             f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `make bench` (bench/run_all.py); the raw "
             "figures are in bench/results/*.json. Timings on a shared 2-core machine are noisy: each benchmark "
             "alternates its contenders in one run and compares medians.", ""]
    decode = _load("gtsrb_decode.json")
    if decode:
        s = decode["seconds_median"]
        lines += ["## GTSRB preprocessing (39,209 training images: decode PPM, crop ROI, resize 32×32)", "",
                  "| method | median s | pipeline's speed-up | peak RSS MiB |", "|---|---:|---:|---:|",
                  f"| pipeline reader | {s['reader']:.2f} | | {decode['peak_rss_mib']['reader']:.0f} |",
                  f"| naive Pillow loop | {s['naive']:.2f} | ×{decode['speedup_vs_naive']:.2f} | "
                  f"{decode['peak_rss_mib']['naive']:.0f} |",
                  f"| keras image_dataset_from_directory (PNG copies) | {s['keras']:.2f} | "
                  f"×{decode['speedup_vs_keras']:.2f} | {decode['peak_rss_mib']['keras']:.0f} |", ""]
    train = _load("train.json")
    if train:
        lines += [f"## Training throughput ({train['dataset']}, {train['epochs']} epochs, batch {train['batch_size']}; "
                  f"peak float32 matmul {train['machine']['peak_matmul_gflops']:.0f} GFLOP/s)", "",
                  "| design | stage img/s | plain Keras img/s | ratio | plain Keras on oneDNN img/s | ratio | "
                  "GFLOP/s | of peak |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for design, r in train["designs"].items():
            ips = r["images_per_second"]
            lines.append(f"| {design} | {ips['stage']:.0f} | {ips['plain']:.0f} | "
                         f"×{r['throughput_ratio_stage_vs_plain']:.2f} | {ips['plain_onednn']:.0f} | "
                         f"×{r['throughput_ratio_stage_vs_plain_onednn']:.2f} | {r['training_gflops']:.1f} | "
                         f"{r['fraction_of_peak']:.1%} |")
        lines += ["", "Plain Keras runs with TensorFlow's defaults, which leave its oneDNN kernels off on CPUs "
                  "without AVX-512 VNNI/AMX; the stages turn them on (pipeline/__init__.py). The second ratio "
                  "compares the same kernels: the wrapper's own cost.", ""]
        tracking = train.get("tracking")
        if tracking:
            wall = tracking["stage_wall_seconds"]
            lines += [f"MLflow tracking overhead ({tracking['design']}, {tracking['epochs']} epochs, whole train "
                      f"stage): {wall['tracked']:.1f} s tracked vs {wall['untracked']:.1f} s untracked, "
                      f"{tracking['tracking_overhead']:+.1%}; outside `model.fit` (what drift in training speed does "
                      f"not blur) {tracking['seconds_outside_fit']['tracked']:.1f} s vs "
                      f"{tracking['seconds_outside_fit']['untracked']:.1f} s, "
                      f"{tracking['tracking_overhead_outside_fit']:+.1%} of the untracked stage."]
            if "evaluate_wall_seconds" in tracking:
                evaluate = tracking["evaluate_wall_seconds"]
                lines[-1] += (f" Stages log through a worker process that loads MLflow while they load "
                              f"TensorFlow; evaluate's worker also logs the model while the stage draws its "
                              f"figures: {evaluate['tracked']:.1f} s tracked vs {evaluate['untracked']:.1f} s. "
                              f"MLflow's whole cost per (dataset, design), train outside `model.fit` plus evaluate: "
                              f"{tracking['tracking_seconds_per_design']:.1f} s, "
                              f"{tracking['tracking_seconds_per_design'] / wall['untracked']:.1%} of the untracked "
                              f"train stage.")
            lines.append("")
    pipeline = _load("pipeline.json")
    if pipeline:
        no_op = pipeline["no_op_repro"]
        lines += ["## Pipeline overhead", "", f"- no-op `dvc repro`: {no_op['seconds']:.2f} s (median of "
                  f"{len(no_op['all'])}: {min(no_op['all']):.2f} to {max(no_op['all']):.2f} s; "
                  f"{no_op['cpu_seconds']:.2f} s of CPU). None of the pipeline's code runs: it is DVC's "
                  f"start-up ({no_op['startup_seconds']:.2f} s for `dvc --version`), loading the "
                  f"{no_op['stages']} stages ({no_op['one_stage_seconds']:.2f} s with one checked), then "
                  f"{no_op['per_stage_seconds'] * 1000:.0f} ms per further stage checked; each (dataset, design) "
                  "added to `experiments` adds two stages."]
        full = pipeline.get("default_repro")
        if full:
            lines += [f"- default `dvc repro` from scratch: {full['wall_seconds'] / 60:.1f} min, "
                      f"peak RSS {full['peak_rss_mib']:.0f} MiB", "", "| stage | s | peak RSS MiB |", "|---|---:|---:|"]
            lines += [f"| {name} | {s['seconds']:.0f} | {s['peak_rss_mib']:.0f} |" for name, s in full["stages"].items()]
            if full.get("test_accuracy"):
                lines += ["", "Test accuracy of that run: " + ", ".join(
                    f"{name} {accuracy:.4f}" for name, accuracy in full["test_accuracy"].items()) + "."]
        lines.append("")
    ops = _load("reference_ops.json")
    if ops:
        lines += ["## NumPy reference ops: vectorized vs naive loops (64×28×28×1)", "",
                  "| function | naive s | vectorized s | speed-up |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {r['naive_s']:.4f} | {r['vectorized_s']:.4f} | ×{r['speedup']} |"
                  for name, r in ops.items() if name != "config"]
        lines.append("")
    recipes = _load("recipes.json")
    if recipes:
        epoch, eq = recipes["epoch_seconds_median"], recipes["equalization"]
        lines += ["## Recipe costs (bench/bench_recipes.py)", "",
                  f"- Augmentation ({', '.join(f'{k} {v}' for k, v in recipes['augment'].items())}) on LeNet-5 "
                  f"modern, GTSRB: {epoch['augmented']:.2f} s per epoch against {epoch['plain']:.2f} s without, "
                  f"**+{recipes['augmentation_overhead']:.1%}** (median epoch, runs alternated).",
                  f"- Equalizing GTSRB's {eq['images']:,} training images (train + val splits): histogram "
                  f"**{eq['median']['histogram']:.2f} s**, CLAHE **{eq['median']['clahe']:.2f} s** (median of "
                  f"{len(eq['clahe'])}).", ""]
    return "\n".join(lines)


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    if not args.summary_only:
        for script in SCRIPTS:
            print(f"== {script}", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, str(BENCH / script)], check=True, stdout=subprocess.DEVNULL)
    (BENCH / "RESULTS.md").write_text(summary() + "\n")
    print(f"wrote {BENCH / 'RESULTS.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
