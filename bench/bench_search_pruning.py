"""Pruning's worth in the design search: the same search run twice, without pruning and with it.

Both runs sample with the same seed from the same space (params.yaml's `search:` for the dataset, with
the overrides below), train every trial on the training split and judge it on the validation split, and
spend the same number of trials. The figure of merit is the training epochs each spends, and whether the
pruned search's best validation accuracy lies within the 95% (Wilson) interval of the unpruned one's.
Each run is a study of its own in a throwaway SQLite storage, with tracking off.

Usage (from the repository root, after `dvc repro normalize@mnist`; about 40 minutes on 2 cores)::

    .venv/bin/python bench/bench_search_pruning.py [--dataset mnist] [--trials 16] [--epochs 6]

Prints one line per trial and a summary, and writes bench/results/search_pruning.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "search_pruning.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--pruner", default="successive_halving")
    args = parser.parse_args()
    os.environ["PIPELINE_TRACKING"] = "off"
    os.environ.pop("PIPELINE_SEARCH_STORAGE", None)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    from scipy.stats import binomtest

    from pipeline.config import load_params, parse_params
    from pipeline.core import files, paths
    from pipeline.core.progress import setup_logging
    from pipeline.search import study as studies
    from pipeline.training import compute

    setup_logging()
    raw = load_params().raw
    val_images = len(files.load_split(args.dataset, "val")[1])
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        for pruner in ("none", args.pruner):
            changed = copy.deepcopy(raw)
            changed["search"].update(trials=args.trials, minutes=None, population=args.population, pruner=pruner)
            changed["search"]["recipe"]["epochs"] = args.epochs
            changed["search"]["per_dataset"].get(args.dataset, {}).pop("recipe", None)
            params = parse_params(changed)
            settings = params.search_settings(args.dataset)
            search = studies.Search(params, settings, f"sqlite:///{folder}/{pruner}.db")
            started = time.perf_counter()
            search.run(None)
            rows = studies.trial_rows(search.study)
            completed = [row for row in rows if row["ended"] == "completed"]
            best = max(completed, key=lambda row: row["val_accuracy"])
            correct = round(best["val_accuracy"] * val_images)
            interval = binomtest(correct, val_images).proportion_ci(0.95, method="wilson")
            runs[pruner] = {
                "epochs": sum(row["epochs"] for row in rows),
                "seconds": time.perf_counter() - started,
                "best_val_accuracy": best["val_accuracy"],
                "best_trial": best["number"],
                "interval_95": [interval.low, interval.high],
                "ended": {e: sum(row["ended"] == e for row in rows) for e in studies.ENDED},
                "front": studies.pareto_front(search.study),
                "trials": rows,
            }
    plain, pruned = runs["none"], runs[args.pruner]
    summary = {
        "dataset": args.dataset,
        "validation_images": val_images,
        "trials": args.trials,
        "epochs_per_trial": args.epochs,
        "pruner": args.pruner,
        "machine": f"{compute.cpu_model()}, {compute.available_cores()} cores",
        "epochs_saved": 1 - pruned["epochs"] / plain["epochs"],
        "pruned_best_within_interval": bool(plain["interval_95"][0] <= pruned["best_val_accuracy"]),
        "runs": runs,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(summary, indent=2, default=str))
    for name, run in runs.items():
        low, high = run["interval_95"]
        print(
            f"{name:>20}: {run['epochs']:4d} epochs, {run['seconds']:6.0f} s, best val accuracy "
            f"{run['best_val_accuracy']:.4f} [{low:.4f}, {high:.4f}] (trial {run['best_trial']}), {run['ended']}"
        )
    print(
        f"pruning saved {summary['epochs_saved']:.0%} of the epochs; its best is "
        f"{'within' if summary['pruned_best_within_interval'] else 'below'} the unpruned best's 95% interval "
        f"({paths.NORMALIZED / args.dataset}, {summary['machine']})"
    )


if __name__ == "__main__":
    main()
