"""Stage `compare`: one table and two plots of every (dataset, design) in `experiments`.

Writes reports/compare.md (a table per dataset, best test accuracy first), reports/compare.json
and, per dataset, reports/<dataset>_accuracy_vs_params.png and reports/<dataset>_val_accuracy.png
(validation accuracy per epoch, every design overlaid). Logs them to a `compare` run in each
dataset's MLflow experiment.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path
from typing import Any

from pipeline import files, paths, stage, tracking
from pipeline.config import Params
from pipeline.errors import MissingInputError

log = logging.getLogger("pipeline.compare")

COLUMNS = (  # (key, header, format)
    ("design", "design", "{}"),
    ("params", "parameters", "{:,}"),
    ("macs_per_image", "MACs/image", "{:,}"),
    ("epochs_run", "epochs", "{}"),
    ("train_seconds", "train time (s)", "{:.0f}"),
    ("best_val_accuracy", "best val accuracy", "{:.4f}"),
    ("test_accuracy", "test accuracy", "{:.4f}"),
    ("test_loss", "test loss", "{:.4f}"),
)


def read_history(path: Path) -> list[dict[str, float]]:
    with open(path, encoding="utf-8") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def collect(datasets: tuple[str, ...], designs: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    """Every (dataset, design)'s train and evaluate metrics, best test accuracy first."""
    table: dict[str, list[dict[str, Any]]] = {}
    for dataset in datasets:
        rows = []
        for design in designs:
            run = paths.RunPaths(dataset, design)
            missing = [p for p in (run.metrics_dir / "train.json", run.metrics_dir / "evaluate.json", run.history)
                       if not p.is_file()]
            if missing:
                raise MissingInputError(f"{missing[0]}: missing; run `dvc repro` so that train and evaluate of "
                                        f"{design} on {dataset} have run")
            rows.append({"design": design, **files.read_json(run.metrics_dir / "train.json"),
                         **files.read_json(run.metrics_dir / "evaluate.json"),
                         "val_accuracy_per_epoch": [row["val_accuracy"] for row in read_history(run.history)]})
        table[dataset] = sorted(rows, key=lambda row: (-row["test_accuracy"], row["test_loss"], row["design"]))
    return table


def markdown(table: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["# Designs compared", "",
             "Sorted by test accuracy. MACs: multiply-accumulates per image (forward pass).", ""]
    for dataset, rows in table.items():
        lines += [f"## {dataset}", "", "| rank | " + " | ".join(header for _, header, _ in COLUMNS) + " |",
                  "|---:|" + "|".join("---" if key == "design" else "---:" for key, _, _ in COLUMNS) + "|"]
        for rank, row in enumerate(rows, 1):
            cells = [fmt.format(row[key]) if key in row else "–" for key, _, fmt in COLUMNS]
            lines.append(f"| {rank} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def accuracy_vs_params(dataset: str, rows: list[dict[str, Any]]):
    from pipeline.figures import plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        axis.scatter(row["params"], row["test_accuracy"], s=40)
        axis.annotate(row["design"], (row["params"], row["test_accuracy"]), textcoords="offset points",
                      xytext=(5, 4), fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("parameters (log scale)")
    axis.set_ylabel("test accuracy")
    axis.grid(alpha=0.3)
    axis.set_title(f"{dataset}: test accuracy vs parameters")
    return figure


def val_accuracy_curves(dataset: str, rows: list[dict[str, Any]]):
    from pipeline.figures import plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        curve = row["val_accuracy_per_epoch"]
        axis.plot(range(1, len(curve) + 1), curve, "o-", markersize=3, label=row["design"])
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(f"{dataset}: validation accuracy per epoch")
    return figure


def main(args: argparse.Namespace, params: Params) -> None:
    from pipeline import figures

    table = collect(params.experiment_datasets, params.experiment_models)
    with files.atomic_directory(paths.REPORTS) as out:
        (out / "compare.md").write_text(markdown(table), encoding="utf-8")
        files.write_json(out / "compare.json", table)
        for dataset, rows in table.items():
            figures.save(accuracy_vs_params(dataset, rows), out / f"{dataset}_accuracy_vs_params.png")
            figures.save(val_accuracy_curves(dataset, rows), out / f"{dataset}_val_accuracy.png")
    for dataset, rows in table.items():
        log.info("%s: %s", dataset, ", ".join(f"{r['design']} {r['test_accuracy']:.4f}" for r in rows))
        with tracking.stage_run(params, dataset, "compare"):
            tracking.log_metrics({f"test_accuracy.{r['design']}": r["test_accuracy"] for r in rows})
            for name in ("compare.md", "compare.json", f"{dataset}_accuracy_vs_params.png",
                         f"{dataset}_val_accuracy.png"):
                tracking.log_artifact(paths.REPORTS / name, "reports")


if __name__ == "__main__":
    stage.enter(__spec__.name, __doc__)
