"""The model registry: one registered model per dataset (named as the dataset), whose alias `champion` moves
to a new best design only when it beats the champion significantly on the same test images.

compare asks for it (`client.promote`); the worker does it here, with MLflow loaded. A challenger is the best
design's model, of its seed with the best validation accuracy (the test split chooses nothing more than
compare's ranking). Each challenger becomes a model version (once), tagged with its design and seed and with the
decision: the first champion, promoted over version N, or kept out by it, with the exact McNemar p and the
bootstrap interval of the accuracy difference (pipeline/analysis/stats.py `beats`).
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import UserError
from pipeline.tracking.store import mlflow_api

ALIAS = "champion"


class NoChampionError(UserError):
    """A dataset's registered model has no champion yet."""


def _correct(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, correct) of a predictions.csv."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([int(row["label"]) for row in rows])
    return labels, labels == np.array([int(row["predicted"]) for row in rows])


def _logged_model(client: Any, dataset: str, design: str, seed: int, experiment_name: str) -> Any | None:
    """The model evaluate logged last for (design, seed) in DVC experiment `experiment_name` (in the train
    run it continued, or in an evaluation's own run)."""
    experiment = client.get_experiment_by_name(dataset)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.model = '{design}' and tags.seed = '{seed}' and tags.dvc_experiment = '{experiment_name}'",
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        found = client.search_logged_models(
            [experiment.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        if found:
            return found[0]
    return None


def promote(dataset: str, design: str, seed: int, predictions: str, experiment_name: str) -> None:
    """Register the challenger (design, seed, its local `predictions`, of DVC experiment `experiment_name`)
    and move the alias if it beats the champion; says what it decided in one line."""
    mlflow = mlflow_api()
    client = mlflow.MlflowClient()
    model = _logged_model(client, dataset, design, seed, experiment_name)
    if model is None:
        print(f"registry: {dataset}: {design} (seed {seed}) has no logged model here yet", file=sys.stderr)
        return
    if not client.search_registered_models(filter_string=f"name = '{dataset}'"):
        client.create_registered_model(dataset, tags={"dataset": dataset})
    # tagged with its logged model's id: SQL stores do not return a version's model_id
    versions = [
        v for v in client.search_model_versions(f"name = '{dataset}'") if v.tags.get("model_id") == model.model_id
    ]
    version = versions[0] if versions else mlflow.register_model(f"models:/{model.model_id}", dataset)
    for key, value in (("design", design), ("seed", str(seed)), ("dataset", dataset), ("model_id", model.model_id)):
        client.set_model_version_tag(dataset, version.version, key, value)
    try:
        champion = client.get_model_version_by_alias(dataset, ALIAS)
    except mlflow.exceptions.MlflowException:
        champion = None
    who = f"{design} (seed {seed}, version {version.version})"
    if champion is None:
        decision, moves = "the first champion", True
    elif champion.version == version.version:
        decision, moves = "already the champion", False
    else:
        labels, challenger = _correct(predictions)
        with tempfile.TemporaryDirectory() as folder:
            theirs = mlflow.artifacts.download_artifacts(
                run_id=champion.run_id, artifact_path="reports/predictions.csv", dst_path=folder
            )
            champion_labels, champion_correct = _correct(theirs)
        if not np.array_equal(labels, champion_labels):
            decision, moves = f"not compared with version {champion.version}: another test set", False
        else:
            from pipeline.analysis import stats  # SciPy: only when there is a champion to beat

            verdict = stats.beats(challenger, champion_correct)
            low, high = verdict["difference_ci"]
            evidence = (
                f"exact McNemar p = {verdict['p_value']:.3g}, accuracy {100 * verdict['difference']:+.2f} pt "
                f"(95% CI {100 * low:+.2f} to {100 * high:+.2f})"
            )
            moves = bool(verdict["beats"])
            decision = (
                f"promoted over version {champion.version}: {evidence}"
                if moves
                else f"not promoted, version {champion.version} stays champion: {evidence}"
            )
            client.set_model_version_tag(dataset, version.version, "champion_p_value", f"{verdict['p_value']:.6g}")
        client.set_model_version_tag(dataset, version.version, "champion_against", str(champion.version))
    client.set_model_version_tag(dataset, version.version, "champion_decision", decision)
    if moves:
        client.set_registered_model_alias(dataset, ALIAS, version.version)
    print(f"registry: {dataset}: {who}: {decision}", file=sys.stderr, flush=True)


def champion(dataset: str) -> tuple[str, int]:
    """(design, seed) of the dataset's champion, from its model version's tags."""
    mlflow = mlflow_api()
    try:
        version = mlflow.MlflowClient().get_model_version_by_alias(dataset, ALIAS)
    except mlflow.exceptions.MlflowException:
        raise NoChampionError(
            f"models:/{dataset}@{ALIAS}: no such model version in {mlflow.get_tracking_uri()}; "
            f"`dvc repro compare` registers one"
        ) from None
    return version.tags["design"], int(version.tags["seed"])
