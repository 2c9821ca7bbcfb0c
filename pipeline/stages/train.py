"""Stage `train@<dataset>-<design>-<seed>`: build a design from params, fit it, save it and its history.

Outputs (pipeline/core/paths.py): models/<dataset>/<design>/seed_<seed>/ (model.keras, summary.txt,
run.json with the MLflow run id that evaluate continues, preprocessing.json with what predicting needs),
plots/history/<dataset>/<design>/seed_<seed>.csv
(per-epoch loss and accuracy, train and validation) and metrics/<dataset>/<design>/seed_<seed>/train.json.
The training seed sets the initial weights and the batch order; the data split has its own (`seed`).
"""

from __future__ import annotations

import argparse
import csv
import logging
import signal
from dataclasses import replace
from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.core import files, paths
from pipeline.training import compute
from pipeline.training.checkpoints import Checkpoint
from pipeline.training.recipe import TrainSettings

ARGUMENTS = ("dataset", "design", "--seed")
log = logging.getLogger(__name__)


def run_settings(params: Params, design_name: str, dataset: str) -> TrainSettings:
    """The design's recipe on `dataset` as this run uses it: `threads: auto` resolved to the count
    it trains on, which is what train.json, MLflow and the checkpoint record."""
    settings = params.train_settings(design_name, dataset)
    return replace(settings, threads=compute.resolve_threads(settings.threads))


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    with files.atomic_file(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(args: argparse.Namespace, params: Params) -> None:
    # TensorFlow loads only now, after params were checked and while MLflow loads in the tracking worker
    from pipeline.designs.report import format_report
    from pipeline.training.loop import run_fingerprint, train

    design = params.design(args.design)
    seed = params.run_seed(args.seed)
    out = paths.RunPaths(args.dataset, args.design, seed)
    # SIGTERM (a stopped job, a shut-down machine) ends the stage as Ctrl-C does: its MLflow
    # run is closed and the last epoch's checkpoint stays for the next `dvc repro` to resume.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    settings = run_settings(params, args.design, args.dataset)
    checkpoint = Checkpoint.of_run(
        args.dataset,
        args.design,
        seed,
        run_fingerprint(params.raw["models"][args.design], args.dataset, seed, settings),
    )
    state = checkpoint.load()

    with tracking.stage_run(
        params, args.dataset, "train", model=args.design, run_id=state["run_id"] if state else None, seed=seed
    ) as run:
        if state:
            tracking.log_metrics({"resumed_after_epoch": state["epochs_done"]})
        tracking.log_params(
            {
                "dataset": args.dataset,
                "design": args.design,
                "split_seed": params.seed,
                "train": settings.as_params(),
                "design_spec": params.raw["models"][args.design],
                "normalize": params.normalize_for(args.dataset).__dict__,
                "builtin": design.builtin or "none",
                "device": compute.device(),
            }
        )
        if not state:  # a resumed run has them already
            for split, context in (("train", "training"), ("val", "validation")):
                tracking.log_input(paths.NORMALIZED / args.dataset / f"{split}.npz", f"{args.dataset}-{split}", context)
        result = train(design, args.dataset, seed, checkpoint, settings, state, run.id)
        model = result["model"]
        with files.atomic_directory(out.model_dir) as tmp:
            with files.writing(tmp / "model.keras"):
                model.save(tmp / "model.keras")
            # evaluate fits its temperature on them: the last validation pass, not one more
            files.save_arrays(tmp / out.validation_outputs.name, outputs=result["validation_outputs"])
            (tmp / "summary.txt").write_text(result["summary"], encoding="utf-8")
            (tmp / "architecture.md").write_text(format_report(result["architecture"]), encoding="utf-8")
            files.write_json(
                tmp / "run.json",
                {
                    "run_id": run.id,
                    "dataset": args.dataset,
                    "design": args.design,
                    "seed": seed,
                    "input_shape": result["meta"]["input_shape"],
                    "threads": settings.threads,
                },
            )  # evaluate computes with them too
            # The data's meta and normalize's stats beside the model: the folder alone predicts
            # (pipeline/portable/inference.py)
            files.write_json(
                tmp / "preprocessing.json",
                {"meta": result["meta"], "normalize": files.read_json(paths.NORMALIZED / args.dataset / "stats.json")},
            )
        write_history(out.history, result["history"])
        files.write_json(out.metrics_dir / "train.json", result["metrics"])
        tracking.log_metrics(dict(result["metrics"]))
        tracking.log_metrics({f"arch_{key}": value for key, value in result["architecture"]["totals"].items()})
        tracking.log_artifact(out.model_dir / "summary.txt", "reports")
        tracking.log_artifact(out.model_dir / "architecture.md", "reports")
        tracking.log_text(out.history.read_text(encoding="utf-8"), "reports/history.csv")
    checkpoint.discard()  # the outputs are written: nothing left to resume
    log.info(
        "trained %s on %s (seed %d) in %.1fs: best val accuracy %.4f",
        args.design,
        args.dataset,
        seed,
        result["metrics"]["train_seconds"],
        result["metrics"]["best_val_accuracy"],
    )
