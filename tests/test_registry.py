"""The registry's champion moves only when a challenger beats it significantly on the same test images."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline.analysis import stats
from pipeline.tracking import export, registry
from tests.test_tracking import model_folder

IMAGES = 1000
LABELS = np.arange(IMAGES) % 10


def correct_except(wrong: np.ndarray) -> np.ndarray:
    right = np.ones(IMAGES, bool)
    right[wrong] = False
    return right


def test_a_clear_gain_beats_the_champion_and_a_small_or_no_gain_does_not() -> None:
    champion = correct_except(np.arange(0, 80))  # 92.0%
    clear = correct_except(np.arange(60, 100))  # 96.0%: right on 60 the champion misses, wrong on 20 it gets
    small = correct_except(np.arange(5, 82))  # 92.3%: 3 images net
    assert stats.beats(clear, champion)["beats"]
    verdict = stats.beats(small, champion)
    assert not verdict["beats"] and verdict["p_value"] > 0.05 and verdict["difference"] == pytest.approx(0.003)
    same = stats.beats(champion, champion)
    assert not same["beats"] and same["p_value"] == 1.0 and same["difference_ci"] == [0.0, 0.0]
    worse = stats.beats(champion, clear)
    assert not worse["beats"] and worse["p_value"] < 0.05  # significant, but the wrong way


def write_predictions(path: Path, right: np.ndarray) -> Path:
    predicted = np.where(right, LABELS, (LABELS + 1) % 10)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "label", "predicted", "confidence", "calibrated_confidence", "int8_predicted"])
        writer.writerows((i, label, guess, 0.9, 0.9, guess) for i, (label, guess) in enumerate(zip(LABELS, predicted)))
    return path


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> mlflow.MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.create_experiment("mnist", artifact_location=(tmp_path / "mlruns").as_uri())
    return mlflow.MlflowClient()


def evaluated(tmp_path: Path, design: str, seed: int, right: np.ndarray) -> Path:
    """A design's run as train and evaluate leave it: tags, the logged model and reports/predictions.csv."""
    import keras

    folder = model_folder(
        tmp_path / design,
        keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]),
        (4, 4, 1),
    )
    (tmp_path / "metrics" / design).mkdir(parents=True)
    predictions = write_predictions(tmp_path / "metrics" / design / "predictions.csv", right)
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("mnist").experiment_id):
        mlflow.set_tags({"model": design, "seed": str(seed), "dvc_experiment": "workspace", "stage": "train+evaluate"})
        export.log_model_folder(str(folder), {"test_accuracy": float(right.mean())})
        mlflow.log_artifact(str(predictions), "reports")
    return predictions


def champion_version(client: mlflow.MlflowClient):
    return client.get_model_version_by_alias("mnist", registry.ALIAS)


def test_the_champion_alias_moves_only_on_a_significant_gain(
    store: mlflow.MlflowClient, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    first = evaluated(tmp_path, "first", 1, correct_except(np.arange(0, 80)))
    registry.promote("mnist", "first", 1, str(first), "workspace")
    assert "registry: mnist: first (seed 1, version 1): the first champion" in capfd.readouterr().err
    assert int(champion_version(store).version) == 1

    close = evaluated(tmp_path, "close", 2, correct_except(np.arange(5, 82)))
    registry.promote("mnist", "close", 2, str(close), "workspace")
    assert int(champion_version(store).version) == 1, "a 0.3-point gain moved the champion"
    kept = store.get_model_version("mnist", "2")
    assert kept.tags["champion_decision"].startswith("not promoted, version 1 stays champion: exact McNemar p = ")
    assert float(kept.tags["champion_p_value"]) > 0.05 and kept.tags["design"] == "close"

    better = evaluated(tmp_path, "better", 1, correct_except(np.arange(60, 100)))
    registry.promote("mnist", "better", 1, str(better), "workspace")
    assert int(champion_version(store).version) == 3
    promoted = store.get_model_version("mnist", "3")
    assert promoted.tags["champion_decision"].startswith("promoted over version 1: exact McNemar p = ")
    assert float(promoted.tags["champion_p_value"]) < 0.05 and promoted.tags["champion_against"] == "1"
    assert registry.champion("mnist") == ("better", 1)  # what `predict mnist champion` uses

    registry.promote("mnist", "better", 1, str(better), "workspace")  # compare again: nothing new
    assert len(store.search_model_versions("name = 'mnist'")) == 3
    assert "already the champion" in capfd.readouterr().err
    served = mlflow.pyfunc.load_model("models:/mnist@champion")  # what `mlflow models serve -m` loads
    assert served.predict(np.zeros((2, 4, 4, 1), np.uint8)).shape == (2, 10)


def test_a_dataset_without_a_champion_is_named_in_one_line(store: mlflow.MlflowClient) -> None:
    with pytest.raises(registry.NoChampionError, match=r"models:/mnist@champion: no such model version"):
        registry.champion("mnist")
