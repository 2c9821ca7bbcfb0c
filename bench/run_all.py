"""Run every benchmark (`make bench`), then summarize bench/results/*.json in bench/RESULTS.md.

Each benchmark is its own script, printing a JSON result and a one-line summary; this runs
them one after another (never in parallel: they measure the same two cores) and writes the
summary with the machine it ran on. `--summary-only` rewrites RESULTS.md from the JSON files.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
KEPT_HEADING = "## Machinery reviewed"
SCRIPTS = (
    "bench_reference_ops.py",
    "bench_gtsrb_decode.py",
    "bench_recipes.py",
    "bench_train.py",
    "bench_parallel.py",
    "bench_precision.py",
    "bench_pipeline.py",
    "bench_tracking_worker.py",
    "bench_server_load.py",
    "bench_fuzz.py",
)
# The CPU flags that decide TensorFlow's kernels here: AVX2/AVX-512 (oneDNN), VNNI, bfloat16 (AMX, AVX-512 BF16).
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def machine() -> str:
    import psutil

    sys.path.insert(0, str(BENCH.parent))
    from pipeline import gpu_present
    from pipeline.training import compute

    flags = [flag for flag in FLAGS if flag in compute.cpu_flags()]
    return (
        f"{compute.cpu_model()}, {compute.available_cores()} cores (flags: {', '.join(flags) or 'none of '}"
        f"{'' if flags else ', '.join(FLAGS)}), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
        f"{'a' if gpu_present() else 'no'} GPU; {platform.platform()}; Python {platform.python_version()}"
    )


def summary() -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine()}.",
        "",
        f"Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `make bench` (bench/run_all.py); the raw "
        "figures are in bench/results/*.json. Timings on a shared 2-core machine are noisy: each benchmark "
        "alternates its contenders in one run and compares medians.",
        "",
    ]
    decode = _load("gtsrb_decode.json")
    if decode:
        s = decode["seconds_median"]
        lines += [
            "## GTSRB preprocessing (39,209 training images: decode PPM, crop ROI, resize 32×32)",
            "",
            "| method | median s | pipeline's speed-up | peak RSS MiB |",
            "|---|---:|---:|---:|",
            f"| pipeline reader | {s['reader']:.2f} | | {decode['peak_rss_mib']['reader']:.0f} |",
            f"| naive Pillow loop | {s['naive']:.2f} | ×{decode['speedup_vs_naive']:.2f} | "
            f"{decode['peak_rss_mib']['naive']:.0f} |",
            f"| keras image_dataset_from_directory (PNG copies) | {s['keras']:.2f} | "
            f"×{decode['speedup_vs_keras']:.2f} | {decode['peak_rss_mib']['keras']:.0f} |",
            "",
        ]
    train = _load("train.json")
    if train:
        lines += [
            f"## Training throughput ({train['dataset']}, {train['epochs']} epochs, batch {train['batch_size']}; "
            f"peak float32 matmul {train['machine']['peak_matmul_gflops']:.0f} GFLOP/s)",
            "",
            "| design | stage img/s | plain Keras img/s | ratio | plain Keras on oneDNN img/s | ratio | "
            "GFLOP/s | of peak |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for design, r in train["designs"].items():
            ips = r["images_per_second"]
            lines.append(
                f"| {design} | {ips['stage']:.0f} | {ips['plain']:.0f} | "
                f"×{r['throughput_ratio_stage_vs_plain']:.2f} | {ips['plain_onednn']:.0f} | "
                f"×{r['throughput_ratio_stage_vs_plain_onednn']:.2f} | {r['training_gflops']:.1f} | "
                f"{r['fraction_of_peak']:.1%} |"
            )
        lines += [
            "",
            "Plain Keras runs with TensorFlow's defaults, which leave its oneDNN kernels off on CPUs "
            "without AVX-512 VNNI/AMX; the stages turn them on (pipeline/__init__.py). The second ratio "
            "compares the same kernels: the wrapper's own cost.",
            "",
        ]
        tracking = train.get("tracking")
        if tracking:
            wall = tracking["stage_wall_seconds"]
            lines += [
                f"MLflow tracking overhead ({tracking['design']}, {tracking['epochs']} epochs, whole train "
                f"stage): {wall['tracked']:.1f} s tracked vs {wall['untracked']:.1f} s untracked, "
                f"{tracking['tracking_overhead']:+.1%}; outside `model.fit` (what drift in training speed does "
                f"not blur) {tracking['seconds_outside_fit']['tracked']:.1f} s vs "
                f"{tracking['seconds_outside_fit']['untracked']:.1f} s, "
                f"{tracking['tracking_overhead_outside_fit']:+.1%} of the untracked stage."
            ]
            if "evaluate_wall_seconds" in tracking:
                evaluate = tracking["evaluate_wall_seconds"]
                lines[-1] += (
                    f" Stages log through a worker process that loads MLflow while they load "
                    f"TensorFlow; evaluate's worker also logs the model while the stage draws its "
                    f"figures: {evaluate['tracked']:.1f} s tracked vs {evaluate['untracked']:.1f} s. "
                    f"MLflow's whole cost per (dataset, design), train outside `model.fit` plus evaluate: "
                    f"{tracking['tracking_seconds_per_design']:.1f} s, "
                    f"{tracking['tracking_seconds_per_design'] / wall['untracked']:.1%} of the untracked "
                    f"train stage."
                )
            lines.append("")
    pipeline = _load("pipeline.json")
    if pipeline:
        no_op = pipeline["no_op_repro"]
        lines += [
            "## Pipeline overhead",
            "",
            f"- no-op `dvc repro`: {no_op['seconds']:.2f} s (median of "
            f"{len(no_op['all'])}: {min(no_op['all']):.2f} to {max(no_op['all']):.2f} s; "
            f"{no_op['cpu_seconds']:.2f} s of CPU). None of the pipeline's code runs: it is DVC's "
            f"start-up ({no_op['startup_seconds']:.2f} s for `dvc --version`), loading the "
            f"{no_op['stages']} stages ({no_op['one_stage_seconds']:.2f} s with one checked), then "
            f"{no_op['per_stage_seconds'] * 1000:.0f} ms per further stage checked; each (dataset, design, "
            "seed) added to `experiments` adds two stages.",
        ]
        if "runner_seconds" in no_op:
            lines += [
                f"- no-op `make repro` (`python -m pipeline repro`): {no_op['runner_seconds']:.2f} s (median of "
                f"{len(no_op['runner_all'])}): one status in-process, no stage started."
            ]
        full = pipeline.get("default_repro")
        if full:
            lines += [
                f"- default `{full.get('command', 'dvc repro')}` from scratch: {full['wall_seconds'] / 60:.1f} "
                f"min, peak RSS {full['peak_rss_mib']:.0f} MiB{_load_note(full)}"
            ]
            if full.get("note"):  # how it was measured, when not by bench_pipeline.py
                lines += [f"  ({full['note']})"]
            if full.get("stages"):
                lines += ["", "| stage | s | peak RSS MiB |", "|---|---:|---:|"]
                lines += [
                    f"| {name} | {s['seconds']:.0f} | {s['peak_rss_mib']:.0f} |" for name, s in full["stages"].items()
                ]
            if full.get("test_accuracy"):
                lines += [
                    "",
                    "Test accuracy of that run: "
                    + ", ".join(f"{name} {accuracy:.4f}" for name, accuracy in full["test_accuracy"].items())
                    + ".",
                ]
        lines.append("")
    ops = _load("reference_ops.json")
    if ops:
        lines += [
            "## NumPy reference ops: vectorized vs naive loops (64×28×28×1)",
            "",
            "| function | naive s | vectorized s | speed-up |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {name} | {r['naive_s']:.4f} | {r['vectorized_s']:.4f} | ×{r['speedup']} |"
            for name, r in ops.items()
            if name != "config"
        ]
        lines.append("")
    recipes = _load("recipes.json")
    if recipes:
        epoch, eq = recipes["epoch_seconds_median"], recipes["equalization"]
        lines += [
            "## Recipe costs (bench/bench_recipes.py)",
            "",
            f"- Augmentation ({', '.join(f'{k} {v}' for k, v in recipes['augment'].items())}) on LeNet-5 "
            f"modern, GTSRB{', train.threads ' + str(recipes['threads']) if 'threads' in recipes else ''}: "
            f"{epoch['augmented']:.2f} s per epoch against {epoch['plain']:.2f} s without, "
            f"**+{recipes['augmentation_overhead']:.1%}** (median epoch, runs alternated).",
            f"- Equalizing GTSRB's {eq['images']:,} training images (train + val splits): histogram "
            f"**{eq['median']['histogram']:.2f} s**, CLAHE **{eq['median']['clahe']:.2f} s** (median of "
            f"{len(eq['clahe'])}).",
            "",
        ]
    parallel = _load("parallel.json")
    if parallel:
        wall = parallel["wall_seconds_median"]
        lines += [
            f"## Trainings side by side (bench/bench_parallel.py: {len(parallel['seeds'])} seeds of "
            f"{parallel['design']} on {parallel['dataset']}, {parallel['epochs']} epochs, train stages only)",
            "",
            "| how | command | train.threads | median s | side by side's speed-up |",
            "|---|---|---:|---:|---:|",
            f"| one after another | `dvc repro train` | {parallel['cpus']} | {wall['one_after_another']:.1f} | "
            f"×{parallel['speedup_vs_one_after_another']:.2f} |",
            f"| one after another | `dvc repro train` | 1 | {wall['one_after_another_1_thread']:.1f} | "
            f"×{parallel['speedup_vs_one_after_another_1_thread']:.2f} |",
            f"| side by side | `python -m pipeline repro train` | 1 | {wall['side_by_side']:.1f} | |",
            "",
            f"Same params with the same threads gave identical metrics side by side and one after another: "
            f"{'yes' if parallel['identical_metrics_same_threads'] else '**no**'}. "
            f"{parallel['rounds']} rounds, alternated{_load_note(parallel)}.",
            "",
        ]
    precision = _load("precision.json")
    if precision:
        lines += [
            f"## Precision: mixed_bfloat16 vs float32 (bench/bench_precision.py, {precision['threads']} threads; "
            f"bfloat16 instructions: {', '.join(precision['bf16_flags']) or 'none'})",
            "",
            "| dataset/design | epochs | float32 s/epoch | bfloat16 s/epoch | speed-up | float32 test acc. | "
            "bfloat16 test acc. |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in precision["runs"].items():
            epoch, test = r["epoch_seconds_median"], r["test_accuracy"]
            lines.append(
                f"| {name} | {r['epochs']} | {epoch['float32']:.2f} | {epoch['mixed_bfloat16']:.2f} | "
                f"×{r['speedup']:.2f} | {test['float32']:.4f} | {test['mixed_bfloat16']:.4f} |"
            )
        lines += ["", f"{precision['rounds']} rounds, alternated{_load_note(precision)}.", ""]
    server_load = _load("server_load.json")
    if server_load:
        from bench_server_load import markdown

        server = server_load.get("server", {})
        busy = [r["cores_busy"]["machine"] for c in server.get("configs", []) for r in c["rounds"]]
        lines += [
            "## Tracking server under load (bench/bench_server_load.py)",
            "",
            f"`{server_load['command']}`, {server_load['date']}{_load_note(server_load)}"
            + (
                f"; the machine's cores busy while clients logged, every process counted: {min(busy):.1f} to "
                f"{max(busy):.1f} of {server_load['machine']['cores']}"
                if busy
                else ""
            )
            + ". Each N logs for "
            f"{server.get('seconds_per_n', 0):.0f} s; a run is a stage's train and evaluate "
            f"({server.get('epochs_per_run')} epochs); latencies per MLflow client call; lost and duplicated "
            "metric values, runs not FINISHED and missing artifacts are read back from the server after each N "
            "(duplicated also counts values no client logged and runs no client created).",
            "",
            markdown(server_load),
            "",
        ]
    lines += _fuzz_section(_load("fuzz.json"))
    return "\n".join(lines)


def _fuzz_section(fuzz: dict | None) -> list[str]:
    """bench/bench_fuzz.py's table: examples and time per property in CI and in the long run."""
    if not fuzz or "long" not in fuzz["runs"]:
        return []
    ci, long = fuzz["runs"].get("ci", {"tests": {}, "wall_seconds": 0}), fuzz["runs"]["long"]
    m = fuzz["machine"]
    lines = [
        f"## Property tests, long run (bench/bench_fuzz.py, seed {fuzz['seed']})",
        "",
        f"{fuzz['date']} on {m['model']}, {m['cores']} cores (AVX-512: {', '.join(m['avx512']) or 'no'}; "
        f"AMX: {', '.join(m['amx']) or 'no'}), `{fuzz['command']}`. Profiles (tests/conftest.py): `ci` "
        f"{fuzz['profiles']['ci']['max_examples']} derandomized examples per property, `long` "
        f"{fuzz['profiles']['long']['max_examples']:,}; deadline {fuzz['profiles']['ci']['deadline_ms']:.0f} ms.",
        "",
        "| property | CI examples | CI s | long examples | long s | long: how inputs ended | outcome |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for nodeid, entry in long["tests"].items():
        if "examples" not in entry:
            continue
        in_ci = ci["tests"].get(nodeid, {})
        ends = ", ".join(f"{name} {share:.0f}%" for name, share in entry["events_percent"].items())
        lines.append(
            f"| `{nodeid.split('::')[-1]}` | {in_ci.get('examples', '')} | {in_ci.get('seconds', '')} | "
            f"{entry['examples']:,} | {entry.get('seconds', 0):.0f} | {ends} | {entry['outcome']} |"
        )
    failures = fuzz["failures"]
    lines += [
        "",
        f"The three files took {ci['wall_seconds']:.0f} s with the `ci` profile (pytest's start included) and "
        f"{long['wall_seconds']:.0f} s with `long`; load average {fuzz['load_average_before']:.1f} before, "
        f"{fuzz['load_average_after']:.1f} after. Failures: "
        + ("; ".join(f"{f['profile']} {f['test'].split('::')[-1]}: {f['error']}" for f in failures) or "none")
        + '. What the properties found before, and the fixes: "Defects the property tests found" below.',
        "",
    ]
    return lines


def _load_note(result: dict) -> str:
    """What else ran: the 1-minute load average before and after (2 cores busy at 2.0)."""
    load = result.get("load_average")
    if not load or "after" not in load:
        return ""
    return f" (load average {load['before']['1min']:.1f} before, {load['after']['1min']:.1f} after)"


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
    results = BENCH / "RESULTS.md"
    kept = results.read_text().partition(KEPT_HEADING) if results.is_file() else ("", "", "")
    # The sections from KEPT_HEADING on are written by hand (reviews, runs no script repeats): kept as they are.
    results.write_text(summary() + "\n" + (f"\n{KEPT_HEADING}{kept[2]}" if kept[1] else ""))
    print(f"wrote {BENCH / 'RESULTS.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
