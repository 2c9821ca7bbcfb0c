"""Stage `compare`: which designs differ, how sure that is, and what each costs, per dataset.

Reads only files (every (dataset, design, seed)'s train.json, evaluate.json, predictions.csv,
robustness.json and history, and each search's report.json), never MLflow, and writes:

- reports/compare.json, a stable format: `{dataset: {"designs": [row, ...], "pairwise_p":
  {design: {design: p}}}}`, rows ranked as in compare.md; each row's keys are ROW_KEYS (docs/statistics.md);
- reports/compare.md, the same as tables, ties with the best drawn as ties;
- per dataset, reports/<dataset>_accuracy_vs_params.png and _accuracy_vs_latency.png (with 95%
  intervals), _seed_spread.png (every seed's test accuracy) and _val_accuracy.png (per epoch); with the
  corruption benchmark, _accuracy_vs_mce.png and _accuracy_vs_severity.png; after a design search
  (search/<dataset>/report.json), _search_pareto_<cost>.png: its trials and front with these designs marked.

The statistics (pipeline/analysis/stats.py) are computed from the per-image predictions, so anyone can
recompute them from the same files. Everything is logged to a `compare` run per dataset.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import tracking
from pipeline.analysis import calibration, robustness, stats
from pipeline.config import Params
from pipeline.core import files, paths
from pipeline.core.errors import DataError, MissingInputError

ARGUMENTS = ()

log = logging.getLogger(__name__)

# Every row of compare.json has these keys (documented in docs/statistics.md).
ROW_KEYS = (
    "design",
    "rank",
    "seeds",
    "recipe",
    "test_accuracy",
    "test_accuracy_std",
    "test_accuracy_min",
    "test_accuracy_max",
    "test_accuracy_per_seed",
    "test_accuracy_ci",
    "p_value_vs_best",
    "p_value_vs_best_holm",
    "ties_best",
    "p_value_seeds_vs_best",
    "params",
    "macs_per_image",
    "latency_ms",
    "images_per_second",
    "model_bytes",
    "epochs_run",
    "train_seconds",
    "best_val_accuracy",
    "test_loss",
    "test_macro_f1",
    "test_ece",
    "test_ece_calibrated",
    "temperature",
    "int8_test_accuracy",
    "int8_accuracy_change",
    "int8_p_value_vs_float",
    "int8_model_bytes",
    "int8_latency_ms_p50",
    "int8_latency_ms_p95",
    "corruption_accuracy",
    "corruption_accuracy_per_severity",
    "mce",
    "relative_mce",
    "val_accuracy_per_epoch",
)
# Means over seeds of these train.json / evaluate.json numbers.
SEED_MEANS = ("epochs_run", "train_seconds", "best_val_accuracy", "test_loss", "test_macro_f1", "temperature")
# Measured cost: the median over seeds (one design's seeds have the same architecture).
COST = {
    "latency_ms": "predict_latency_ms",
    "images_per_second": "predict_images_per_second",
    "model_bytes": "model_bytes",
}


def read_history(path: Path) -> list[dict[str, float]]:
    with open(path, encoding="utf-8") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """predictions.csv as arrays (label, predicted, confidence, calibrated_confidence), checked to be one row
    per test image in order."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or tuple(rows[0]) != paths.PREDICTION_COLUMNS:
        raise DataError(f"{path}: header must be {','.join(paths.PREDICTION_COLUMNS)}; re-run its evaluate stage")
    try:
        table = np.array([[int(cell) for cell in (*row[:3], row[5])] for row in rows[1:]], dtype=np.int64).reshape(
            -1, 4
        )
    except (ValueError, IndexError) as error:
        raise DataError(
            f"{path}: index, label, predicted and int8_predicted must be ints ({error}); re-run its evaluate stage"
        ) from None
    if not np.array_equal(table[:, 0], np.arange(len(table))):
        raise DataError(f"{path}: index must count the test images 0, 1, 2, ... in order; re-run its evaluate stage")
    try:
        confidences = np.array([[float(cell) for cell in row[3:5]] for row in rows[1:]], np.float64).reshape(-1, 2)
    except ValueError as error:
        raise DataError(f"{path}: the confidences must be numbers ({error}); re-run its evaluate stage") from None
    if not np.all((confidences >= 0) & (confidences <= 1)):
        raise DataError(f"{path}: a confidence outside [0, 1]; re-run its evaluate stage")
    return {
        "label": table[:, 1],
        "predicted": table[:, 2],
        "confidence": confidences[:, 0],
        "calibrated_confidence": confidences[:, 1],
        "int8_predicted": table[:, 3],
    }


def read_run(run: paths.RunPaths, with_robustness: bool = False) -> dict[str, Any]:
    """One seed's files; a missing one is named with the stage that writes it. robustness.json only
    `with_robustness` (experiments.robustness)."""
    writers = {  # each file, and the stage that writes it
        run.metrics_dir / "train.json": "train",
        run.history: "train",
        run.metrics_dir / "evaluate.json": "evaluate",
        run.predictions: "evaluate",
        **({run.robustness: "robustness"} if with_robustness else {}),
    }
    missing = [path for path in writers if not path.is_file()]
    if missing:
        raise MissingInputError(
            f"{missing[0]}: missing; run `dvc repro` so that {writers[missing[0]]} of "
            f"{run.design} (seed {run.seed}) on {run.dataset} has run"
        )
    corrupted = files.read_json(run.robustness) if with_robustness else {"skipped": True}
    return {
        "train": files.read_json(run.metrics_dir / "train.json"),
        "history": read_history(run.history),
        "evaluate": files.read_json(run.metrics_dir / "evaluate.json"),
        "predictions": read_predictions(run.predictions),
        "robustness": None if corrupted.get("skipped") else corrupted,
        "source": run.predictions,
    }


def correctness(dataset: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, np.ndarray]:
    """design -> (seeds, images) booleans, after checking every run predicted the same test labels."""
    reference = next(iter(runs.values()))[0]
    out = {}
    for design, seed_runs in runs.items():
        for run in seed_runs:
            if not np.array_equal(run["predictions"]["label"], reference["predictions"]["label"]):
                raise DataError(
                    f"{run['source']}: its test labels differ from {reference['source']}: the runs of "
                    f"{dataset} were evaluated on different test sets; run `dvc repro`"
                )
        out[design] = np.stack([run["predictions"]["predicted"] == run["predictions"]["label"] for run in seed_runs])
    return out


def design_row(
    design: str, seeds: tuple[int, ...], seed_runs: list[dict[str, Any]], correct: np.ndarray, recipe: str
) -> dict[str, Any]:
    """A design's numbers over its seeds (before the paired tests, which need every design)."""
    per_seed = correct.mean(axis=1).tolist()  # each seed's test accuracy, from its predictions
    summary = stats.seed_summary(per_seed)
    first = seed_runs[0]["train"]
    cost = {key: float(np.median([run["evaluate"][source] for run in seed_runs])) for key, source in COST.items()}
    return {
        "design": design,
        "seeds": list(seeds),
        "recipe": recipe,
        "test_accuracy": summary["mean"],
        "test_accuracy_std": summary["std"],
        "test_accuracy_min": summary["min"],
        "test_accuracy_max": summary["max"],
        "test_accuracy_per_seed": per_seed,
        "test_accuracy_ci": list(stats.bootstrap_ci(stats.image_scores(correct))),
        "params": first["params"],
        "macs_per_image": first["macs_per_image"],
        **cost,
        "model_bytes": int(cost["model_bytes"]),
        **{key: float(np.mean([{**run["train"], **run["evaluate"]}[key] for run in seed_runs])) for key in SEED_MEANS},
        **{  # from the predictions' own confidences, as the accuracies
            key: float(
                np.mean(
                    [calibration.errors(run["predictions"][column], hits)[0] for run, hits in zip(seed_runs, correct)]
                )
            )
            for key, column in (("test_ece", "confidence"), ("test_ece_calibrated", "calibrated_confidence"))
        },
        **int8_numbers(seed_runs, correct),
        "val_accuracy_per_epoch": [[row["val_accuracy"] for row in run["history"]] for run in seed_runs],
    }


def int8_numbers(seed_runs: list[dict[str, Any]], correct: np.ndarray) -> dict[str, float | None]:
    """The int8 models' accuracy (mean over seeds, from predictions.csv), its change from the float models',
    the exact McNemar p of int8 against float on the same images (seeds pooled as between designs), and
    the int8 model's size and batch-1 latency (medians over seeds); None where the design has no int8 model."""
    keys = ("int8_model_bytes", "int8_latency_ms_p50", "int8_latency_ms_p95")
    if any((run["predictions"]["int8_predicted"] < 0).any() for run in seed_runs):
        return dict.fromkeys(("int8_test_accuracy", "int8_accuracy_change", "int8_p_value_vs_float", *keys))
    int8_correct = np.stack([run["predictions"]["int8_predicted"] == run["predictions"]["label"] for run in seed_runs])
    int8_scores, float_scores = stats.image_scores(int8_correct), stats.image_scores(correct)
    return {
        "int8_test_accuracy": float(int8_correct.mean()),
        "int8_accuracy_change": float(int8_correct.mean() - correct.mean()),
        "int8_p_value_vs_float": stats.mcnemar_exact(*stats.discordant(int8_scores, float_scores)),
        **{key: float(np.median([run["evaluate"][key] for run in seed_runs])) for key in keys},
    }


def robustness_numbers(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """design -> its mean corruption accuracy and per severity (means over corruptions and seeds), and its mCE
    and relative mCE against LeNet-5 classic (None without it in the comparison); all None without the
    corruption benchmark (experiments.robustness: false)."""
    keys = ("corruption_accuracy", "corruption_accuracy_per_severity", "mce", "relative_mce")
    if any(run["robustness"] is None for seed_runs in runs.values() for run in seed_runs):
        return {design: dict.fromkeys(keys) for design in runs}
    tables = {
        design: robustness.error_table([run["robustness"] for run in seed_runs]) for design, seed_runs in runs.items()
    }
    baseline = tables.get(robustness.BASELINE)
    out = {}
    for design, (errors, clean, _) in tables.items():
        out[design] = {
            "corruption_accuracy": float(1 - errors.mean()),
            "corruption_accuracy_per_severity": (1 - errors.mean(axis=0)).tolist(),
            "mce": None if baseline is None else robustness.mce(errors, baseline[0]),
            "relative_mce": None if baseline is None else robustness.relative_mce(errors, clean, *baseline[:2]),
        }
    return out


def compare_dataset(
    dataset: str,
    designs: tuple[str, ...],
    seeds: tuple[int, ...],
    recipes: dict[str, str],
    with_robustness: bool = False,
) -> dict[str, Any]:
    """The dataset's entry of compare.json: rows ranked (the best and its ties first), pairwise p-values.
    `recipes`: design -> how it was trained on this dataset, in one line; `with_robustness`: read the corruption
    benchmark's results (experiments.robustness)."""
    runs = {
        design: [read_run(paths.RunPaths(dataset, design, seed), with_robustness) for seed in seeds]
        for design in designs
    }
    correct = correctness(dataset, runs)
    corrupted = robustness_numbers(runs)
    rows = {
        design: design_row(design, seeds, runs[design], correct[design], recipes.get(design, "")) | corrupted[design]
        for design in designs
    }
    by_accuracy = sorted(rows.values(), key=lambda row: (-row["test_accuracy"], row["test_loss"], row["design"]))
    best = by_accuracy[0]
    tests = stats.paired_comparison(
        {design: stats.image_scores(correct[design]) for design in designs}, best=best["design"]
    )
    for design, row in rows.items():
        row.update(tests["vs_best"][design])
        row["p_value_seeds_vs_best"] = (
            1.0 if row is best else stats.seed_level_p(row["test_accuracy_per_seed"], best["test_accuracy_per_seed"])
        )
    ranked = sorted(by_accuracy, key=lambda row: not row["ties_best"])  # stable: ties first, by accuracy
    for position, row in enumerate(ranked, 1):
        row["rank"] = 1 if row["ties_best"] else position
    return {"designs": [{key: row[key] for key in ROW_KEYS} for row in ranked], "pairwise_p": tests["pairwise_p"]}


def collect(
    datasets: tuple[str, ...],
    designs: tuple[str, ...],
    seeds: tuple[int, ...],
    recipes: dict[str, dict[str, str]] | None = None,
    with_robustness: bool = False,
) -> dict[str, Any]:
    """compare.json's content; `recipes`: dataset -> design -> its recipe in one line (Params.recipe)."""
    return {
        dataset: compare_dataset(dataset, designs, seeds, (recipes or {}).get(dataset, {}), with_robustness)
        for dataset in datasets
    }


# --- compare.md

COLUMNS = (  # (header, cell of a row; `_best` marks the best row, `_tie` a shared rank 1)
    ("rank", lambda r: f"{r['rank']}=" if r["_tie"] else str(r["rank"])),
    ("design", lambda r: r["design"]),
    ("seeds", lambda r: str(len(r["seeds"]))),
    (
        "test accuracy",
        lambda r: f"{r['test_accuracy']:.4f}"
        + ("" if r["test_accuracy_std"] is None else f" ± {r['test_accuracy_std']:.4f}"),
    ),
    ("95% CI", lambda r: "{:.4f}–{:.4f}".format(*r["test_accuracy_ci"])),
    (
        "min–max over seeds",
        lambda r: "–" if len(r["seeds"]) == 1 else f"{r['test_accuracy_min']:.4f}–{r['test_accuracy_max']:.4f}",
    ),
    ("p vs best", lambda r: "best" if r["_best"] else _p(r["p_value_vs_best"])),
    ("Holm p", lambda r: "–" if r["_best"] else _p(r["p_value_vs_best_holm"])),
    (
        "seed-level p",
        lambda r: "–" if r["_best"] or r["p_value_seeds_vs_best"] is None else _p(r["p_value_seeds_vs_best"]),
    ),
    ("parameters", lambda r: f"{r['params']:,}"),
    ("MACs/image", lambda r: f"{r['macs_per_image']:,}"),
    ("latency (ms)", lambda r: f"{r['latency_ms']:.2f}"),
    ("images/s", lambda r: f"{r['images_per_second']:,.0f}"),
    ("model bytes", lambda r: f"{r['model_bytes']:,}"),
    ("epochs", lambda r: f"{r['epochs_run']:g}"),
    ("train time (s)", lambda r: f"{r['train_seconds']:.0f}"),
    ("best val accuracy", lambda r: f"{r['best_val_accuracy']:.4f}"),
    ("test loss", lambda r: f"{r['test_loss']:.4f}"),
    ("ECE", lambda r: f"{r['test_ece']:.4f}"),
    ("ECE, T-scaled", lambda r: f"{r['test_ece_calibrated']:.4f} (T {r['temperature']:.2f})"),
    (
        "int8 accuracy (change)",
        lambda r: "–"
        if r["int8_test_accuracy"] is None
        else f"{r['int8_test_accuracy']:.4f} ({100 * r['int8_accuracy_change']:+.2f} pt)",
    ),
    ("int8 p vs float", lambda r: "–" if r["int8_p_value_vs_float"] is None else _p(r["int8_p_value_vs_float"])),
    ("int8 bytes", lambda r: "–" if r["int8_model_bytes"] is None else f"{r['int8_model_bytes']:,.0f}"),
    (
        "int8 latency p50/p95 (ms)",
        lambda r: "–"
        if r["int8_latency_ms_p50"] is None
        else f"{r['int8_latency_ms_p50']:.3f}/{r['int8_latency_ms_p95']:.3f}",
    ),
    ("corruption accuracy", lambda r: "–" if r["corruption_accuracy"] is None else f"{r['corruption_accuracy']:.4f}"),
    ("mCE", lambda r: "–" if r["mce"] is None else f"{r['mce']:.1f}"),
    ("relative mCE", lambda r: "–" if r["relative_mce"] is None else f"{r['relative_mce']:.1f}"),
)

HEADER = f"""# Designs compared

Per dataset, the best mean test accuracy first. **1=** marks designs statistically
indistinguishable from the best (Holm-adjusted p ≥ {stats.ALPHA}): they share rank 1 with it.

- **test accuracy**: mean over the training seeds, ± their sample standard deviation.
- **95% CI**: percentile bootstrap over the test images ({stats.BOOTSTRAP_RESAMPLES:,} resamples,
  seed {stats.BOOTSTRAP_SEED}) of the seed-mean accuracy: what another draw of test images could change.
  The seeds' spread (± and min–max) is what another training could change.
- **p vs best**: exact McNemar test against the best, on the same test images (two-sided binomial
  test of the discordant images). With several seeds, each image counts once, scored by the
  fraction of a design's seeds that got it right, and an image is discordant when the two
  designs score it differently (the sign test; with one seed it is McNemar's test exactly).
  Seeds are pooled this way, not pair by pair: pooling pairs would count one image once per seed,
  as if it were new evidence, and seed-by-seed tests would pair seed n of one design with seed n
  of another for no reason.
- **Holm p**: adjusted over the comparisons with the best. The pairwise table gives raw p-values.
- **seed-level p** (with two or more seeds per design): Welch's t-test of the per-seed accuracies
  against the best's. McNemar's p says whether these trained models differ on these images; this
  one whether the designs differ by more than a training seed moves them. Few seeds make it weak.
- **ECE**: expected calibration error of the raw confidence (15 equal-width bins, Guo et al. 2017),
  mean over seeds; **ECE, T-scaled** after temperature scaling, whose T (mean over seeds) evaluate
  fits on the validation split. Scaling changes no prediction, so no accuracy.
- **int8**: the model after full-integer post-training quantization (TFLite, run by LiteRT; ranges
  from a seeded sample of the training split): its test accuracy and change from the float model in points, the exact
  McNemar p of int8 against float on the same images, its size, and its latency at batch 1 (p50/p95 of
  100 calls). – where the converter has no integer kernel for the design (evaluate's log says which).
- **corruption accuracy**: mean accuracy over the corruption benchmark (15 corruptions x 5 severities of
  the same test images, made once by corrupt); **mCE** and **relative mCE** as ImageNet-C defines them,
  normalized to LeNet-5 classic = 100: below 100, fewer errors under corruption than it (mCE), or an
  accuracy that falls less than its does (relative mCE). – without LeNet-5 classic in experiments.models,
  or with experiments.robustness false (docs/statistics.md).
- **latency** (batch 1, median of 100 calls), **images/s** (batch 512) and **model bytes**:
  measured by evaluate on the machine that ran it; the timings vary from run to run.
"""


def _p(value: float) -> str:
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def markdown(table: dict[str, Any]) -> str:
    lines = [HEADER]
    for dataset, entry in table.items():
        rows = entry["designs"]
        best = rows[0]["design"]
        shared = sum(row["ties_best"] for row in rows) > 1
        lines += [
            f"## {dataset}",
            "",
            "| " + " | ".join(header for header, _ in COLUMNS) + " |",
            "|" + "|".join("---" if header == "design" else "---:" for header, _ in COLUMNS) + "|",
        ]
        for row in rows:
            row = {**row, "_best": row["design"] == best, "_tie": shared and row["ties_best"]}
            lines.append("| " + " | ".join(cell(row) for _, cell in COLUMNS) + " |")
        lines += ["", "How each design was trained here:", ""]
        lines += [f"- **{row['design']}**: {row['recipe']}" for row in rows]
        designs = [row["design"] for row in rows]
        lines += [
            "",
            f"Pairwise exact McNemar p-values on {dataset} (raw):",
            "",
            "| | " + " | ".join(designs) + " |",
            "|---|" + "---:|" * len(designs),
        ]
        for a in designs:
            lines.append(
                f"| {a} | " + " | ".join("–" if a == b else _p(entry["pairwise_p"][a][b]) for b in designs) + " |"
            )
        lines.append("")
    return "\n".join(lines)


# --- plots


def accuracy_against(dataset: str, rows: list[dict[str, Any]], key: str, label: str, log_scale: bool = True):
    """Mean test accuracy with its 95% interval against a cost (log scale); ties with the best filled."""
    from pipeline.analysis.figures import subplots

    figure, axis = subplots(figsize=(7, 4.5))
    for row in rows:
        low, high = row["test_accuracy_ci"]
        mean = row["test_accuracy"]
        axis.errorbar(
            row[key],
            mean,
            yerr=[[mean - low], [high - mean]],
            fmt="o",
            capsize=4,
            markersize=6,
            markerfacecolor=None if row["ties_best"] else "white",
        )
        axis.annotate(
            f"{row['design']} (rank {row['rank']})",
            (row[key], mean),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    if log_scale:
        axis.set_xscale("log")
    axis.set_xlabel(f"{label} (log scale)" if log_scale else label)
    axis.set_ylabel("test accuracy (mean over seeds, 95% CI)")
    axis.grid(alpha=0.3)
    axis.set_title(f"{dataset}: test accuracy vs {label}; filled: ties the best")
    return figure


def seed_spread(dataset: str, rows: list[dict[str, Any]]):
    """Every seed's test accuracy, one column per design, with the mean."""
    from pipeline.analysis.figures import subplots

    figure, axis = subplots(figsize=(max(5.0, 1.2 * len(rows) + 2), 4.5))
    for position, row in enumerate(rows):
        values = row["test_accuracy_per_seed"]
        axis.scatter([position] * len(values), values, s=30, alpha=0.8, zorder=3)
        axis.hlines(row["test_accuracy"], position - 0.25, position + 0.25, colors="black", zorder=4)
        for seed, value in zip(row["seeds"], values):
            axis.annotate(str(seed), (position, value), textcoords="offset points", xytext=(6, -3), fontsize=7)
    axis.set_xticks(range(len(rows)), [row["design"] for row in rows], rotation=20, ha="right")
    axis.set_ylabel("test accuracy per seed (line: mean)")
    axis.grid(alpha=0.3, axis="y")
    axis.set_title(f"{dataset}: spread over training seeds")
    return figure


def val_accuracy_curves(dataset: str, rows: list[dict[str, Any]]):
    from pipeline.analysis.figures import subplots

    figure, axis = subplots(figsize=(7, 4.5))
    for row in rows:
        color = None
        for index, curve in enumerate(row["val_accuracy_per_epoch"]):
            (line,) = axis.plot(
                range(1, len(curve) + 1),
                curve,
                "o-",
                markersize=3,
                color=color,
                alpha=0.8,
                label=row["design"] if index == 0 else None,
            )
            color = line.get_color()  # one colour per design, one line per seed
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(f"{dataset}: validation accuracy per epoch (one line per seed)")
    return figure


def accuracy_against_mce(dataset: str, rows: list[dict[str, Any]]):
    """Clean test accuracy (95% interval) against mCE: up and to the left is better on both."""
    figure = accuracy_against(
        dataset, rows, "mce", f"mCE ({robustness.BASELINE} = 100; lower is more robust)", log_scale=False
    )
    figure.axes[0].axvline(100, color="grey", linestyle=":", linewidth=1)
    return figure


def accuracy_against_severity(dataset: str, rows: list[dict[str, Any]]):
    """Each design's accuracy at severity 0 (clean) to 5, averaged over the corruptions."""
    from pipeline.analysis.figures import subplots

    figure, axis = subplots(figsize=(7, 4.5))
    for row in rows:
        curve = [row["test_accuracy"], *row["corruption_accuracy_per_severity"]]
        axis.plot(range(len(curve)), curve, "o-", markersize=4, label=row["design"])
    axis.set_xticks(range(len(curve)), ["clean\n(test split)", *map(str, range(1, len(curve)))])
    axis.set_xlabel("severity")
    axis.set_ylabel("accuracy (mean over corruptions and seeds)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(f"{dataset}: accuracy under corruption, by severity")
    return figure


def report_figures(dataset: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    pngs = {
        f"{dataset}_accuracy_vs_params.png": accuracy_against(dataset, rows, "params", "parameters"),
        f"{dataset}_accuracy_vs_latency.png": accuracy_against(dataset, rows, "latency_ms", "latency at batch 1 (ms)"),
        f"{dataset}_seed_spread.png": seed_spread(dataset, rows),
        f"{dataset}_val_accuracy.png": val_accuracy_curves(dataset, rows),
    }
    if all(row["mce"] is not None for row in rows):
        pngs[f"{dataset}_accuracy_vs_mce.png"] = accuracy_against_mce(dataset, rows)
    if all(row["corruption_accuracy"] is not None for row in rows):
        pngs[f"{dataset}_accuracy_vs_severity.png"] = accuracy_against_severity(dataset, rows)
    pngs.update(search_fronts(dataset, rows))
    return pngs


# A search's cost, as the rows of this report name it.
SEARCH_COSTS = {"params": "params", "macs": "macs_per_image", "latency_ms": "latency_ms"}


def search_fronts(dataset: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The dataset's design search (search/<dataset>/report.json), if one ran: its trials and front against each
    of its costs, with the designs compared here marked at their mean validation accuracy (never their test's)."""
    from pipeline.analysis.figures import pareto_plot

    search = paths.SearchPaths(dataset).json
    report = files.read_json(search) if search.is_file() else {"skipped": True}
    if report.get("skipped"):
        return {}
    return {
        f"{dataset}_search_pareto_{cost}.png": pareto_plot(
            report["trials"],
            report["front"],
            list(report["finalists"].values()),
            cost,
            f"{dataset}: the search's {len(report['trials'])} trials and the designs compared, validation accuracy",
            shipped=[(row["design"], row[SEARCH_COSTS[cost]], row["best_val_accuracy"]) for row in rows],
        )
        for cost in report["objectives"][1:]
    }


def main(args: argparse.Namespace, params: Params) -> None:
    from pipeline.analysis import figures

    recipes = {
        dataset: {design: params.recipe(design, dataset) for design in params.experiment_models}
        for dataset in params.experiment_datasets
    }
    table = collect(
        params.experiment_datasets,
        params.experiment_models,
        params.experiment_seeds,
        recipes,
        params.experiment_robustness,
    )
    names: dict[str, list[str]] = {}
    with files.atomic_directory(paths.REPORTS) as out:
        (out / "compare.md").write_text(markdown(table), encoding="utf-8")
        files.write_json(out / "compare.json", table)
        for dataset, entry in table.items():
            pngs = report_figures(dataset, entry["designs"])
            for name, figure in pngs.items():
                figures.save(figure, out / name)
            names[dataset] = list(pngs)
    for dataset, entry in table.items():
        rows = entry["designs"]
        log.info(
            "%s: %s",
            dataset,
            ", ".join(
                f"{r['design']} {r['test_accuracy']:.4f}{' (ties the best)' if r['ties_best'] else ''}" for r in rows
            ),
        )
        with tracking.stage_run(params, dataset, "compare"):
            tracking.log_metrics({f"test_accuracy.{r['design']}": r["test_accuracy"] for r in rows})
            tracking.log_metrics({f"p_value_vs_best_holm.{r['design']}": r["p_value_vs_best_holm"] for r in rows})
            for key in ("mce", "relative_mce", "corruption_accuracy"):
                tracking.log_metrics({f"{key}.{r['design']}": r[key] for r in rows if r[key] is not None})
            for name in ("compare.md", "compare.json", *names[dataset]):
                tracking.log_artifact(paths.REPORTS / name, "reports")
            tracking.promote(*challenger(dataset, rows[0]))


def challenger(dataset: str, best: dict[str, Any]) -> tuple[str, str, int, Path]:
    """The best design's model for the registry: of its seed with the best validation accuracy, so that the
    test split picks no seed. (dataset, design, seed, its predictions.csv)"""
    runs = [paths.RunPaths(dataset, best["design"], seed) for seed in best["seeds"]]
    chosen = max(
        runs, key=lambda run: (files.read_json(run.metrics_dir / "train.json")["best_val_accuracy"], -run.seed)
    )
    return dataset, best["design"], chosen.seed, chosen.predictions
