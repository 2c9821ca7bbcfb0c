"""Stages log through the tracking worker: what they log lands in the run, and a stage that fails or
dies leaves its run FAILED, never RUNNING."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pytest

from pipeline import tracking
from pipeline.config import load_params
from pipeline.tracking import client
from tests.conftest import REPO

PARAMS = load_params(REPO / "params.yaml")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> mlflow.MlflowClient:
    """A fresh project store in tmp_path, read with MLflow's client as the UI reads it."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PIPELINE_TRACKING", raising=False)
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_what_a_stage_logs_lands_in_its_finished_run(store: mlflow.MlflowClient, tmp_path: Path) -> None:
    report = tmp_path / "summary.txt"
    report.write_text("layers\n")
    with tracking.stage_run(PARAMS, "mnist", "train", model="lenet5_modern", seed=7) as run:
        tracking.log_params({"train": {"epochs": 2, "optimizer": "adam"}})
        for epoch in (1, 2):
            tracking.log_metrics({"val_accuracy": 0.5 * epoch}, step=epoch)
        tracking.log_artifact(report, "reports")
        tracking.log_text("epoch,loss\n1,0.3\n", "reports/history.csv")
        run_id = run.id
    found = store.get_run(run_id)
    assert found.info.status == "FINISHED"
    assert found.data.params["train.epochs"] == "2" and found.data.params["seed"] == "7"  # the training seed
    assert found.data.tags["model"] == "lenet5_modern" and found.data.tags["stage"] == "train"
    assert found.data.tags["seed"] == "7"  # a design's seeds are runs side by side, grouped by `model`
    assert [(m.step, m.value) for m in store.get_metric_history(run_id, "val_accuracy")] == [(1, 0.5), (2, 1.0)]
    assert {a.path for a in store.list_artifacts(run_id, "reports")} == {"reports/summary.txt", "reports/history.csv"}
    assert store.get_experiment(found.info.experiment_id).name == "mnist"


def test_one_process_logs_several_runs_in_turn(store: mlflow.MlflowClient) -> None:
    ids = {}
    for dataset in ("mnist", "gtsrb"):  # as compare does, one run per dataset
        with tracking.stage_run(PARAMS, dataset, "compare") as run:
            tracking.log_metrics({"test_accuracy.lenet5_modern": 0.9})
            ids[dataset] = run.id
    for dataset, run_id in ids.items():
        found = store.get_run(run_id)
        assert found.info.status == "FINISHED" and found.data.metrics == {"test_accuracy.lenet5_modern": 0.9}
        assert store.get_experiment(found.info.experiment_id).name == dataset


def model_folder(folder: Path, model, image_shape: tuple[int, int, int]) -> Path:
    """A model folder as train leaves it: the model, and what predicting needs (unit scaling, no padding)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    classes = model.output_shape[-1]
    (folder / "preprocessing.json").write_text(
        json.dumps(
            {
                "meta": {
                    "dataset": "mnist",
                    "class_names": [f"class {k}" for k in range(classes)],
                    "image_shape": list(image_shape),
                    "input_shape": list(image_shape),
                },
                "normalize": {
                    "mode": "unit",
                    "scale": [1 / 255],
                    "offset": [0.0],
                    "pad_to": None,
                    "grayscale": False,
                    "equalize": "none",
                },
            }
        )
    )
    return folder


def test_a_saved_model_is_logged_loadable_with_its_signature_and_test_metrics(
    store: mlflow.MlflowClient, tmp_path: Path
) -> None:
    """As evaluate logs it: the worker reads the saved folder, so the stage never imports MLflow. The logged
    model takes raw uint8 pixels and scales them as normalize did."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(2, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    folder = model_folder(tmp_path / "trained", model, (8, 8, 1))
    with tracking.stage_run(PARAMS, "mnist", "evaluate", model="tiny") as run:
        tracking.log_model(folder, {"test_accuracy": 0.75})
        run_id = run.id
    found = store.get_run(run_id)
    (logged,) = store.search_logged_models([found.info.experiment_id])
    assert logged.source_run_id == run_id and found.data.metrics["test_accuracy"] == 0.75
    assert {m.key: m.value for m in logged.metrics}["test_accuracy"] == 0.75  # shown on the model's page
    where = urlparse(logged.artifact_location).path
    signature = mlflow.models.Model.load(where).signature
    assert signature.inputs.inputs[0].shape == (-1, 8, 8, 1) and signature.outputs.inputs[0].shape == (-1, 3)
    assert signature.inputs.inputs[0].type == np.dtype(np.uint8)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    loaded = mlflow.pyfunc.load_model(where)
    np.testing.assert_allclose(loaded.predict(pixels), model.predict(pixels / np.float32(255), verbose=0), rtol=1e-6)
    assert loaded.metadata.metadata["class_names"] == ["class 0", "class 1", "class 2"]


def test_a_stage_that_raises_ends_its_run_failed_and_keeps_its_error(store: mlflow.MlflowClient) -> None:
    with pytest.raises(ValueError, match="bad batch"):
        with tracking.stage_run(PARAMS, "mnist", "train", model="lenet5_modern") as run:
            run_id = run.id
            raise ValueError("bad batch")
    assert store.get_run(run_id).info.status == "FAILED"


def test_a_stage_process_that_dies_leaves_its_run_failed(store: mlflow.MlflowClient, tmp_path: Path) -> None:
    """A killed stage sends no end: its worker sees its input close and fails the run."""
    script = (
        "import os, sys\n"
        "from pipeline import tracking\n"
        "from pipeline.config import load_params\n"
        f"with tracking.stage_run(load_params({str(REPO / 'params.yaml')!r}), 'mnist', 'train') as run:\n"
        "    tracking.log_metrics({'loss': 1.0}, step=1)\n"
        "    print(run.id, 'mlflow' in sys.modules, flush=True)\n"
        "    os._exit(9)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 9, result.stderr
    run_id, imported_mlflow = result.stdout.split()
    assert imported_mlflow == "False", "the stage imported MLflow itself: its seconds of imports are back"
    deadline = time.monotonic() + 60
    while store.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.get_run(run_id).info.status == "FAILED"
    assert [m.value for m in store.get_metric_history(run_id, "loss")] == [1.0]


def test_stages_that_start_side_by_side_on_a_fresh_store_both_log(tmp_path: Path) -> None:
    """The first opening of a SQLite store creates its tables; two workers doing it at once used to
    fail one stage with an alembic migration error (make repro's first two stages on a fresh clone)."""
    script = (
        "from pipeline import tracking\n"
        "from pipeline.config import load_params\n"
        f"with tracking.stage_run(load_params({str(REPO / 'params.yaml')!r}), 'mnist', 'download'):\n"
        "    tracking.log_metrics({'files': 4})\n"
    )
    for attempt in range(3):  # the race is likely, not certain, without the lock: give it chances
        root = tmp_path / f"project_{attempt}"
        root.mkdir()
        env = {**os.environ, "DVC_ROOT": str(root), "PIPELINE_TRACKING": "on"}
        env.pop("MLFLOW_TRACKING_URI", None)
        stages = [
            subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        for stage in stages:
            assert stage.wait(timeout=180) == 0, stage.stderr.read()
        store = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
        assert len(store.search_runs([store.get_experiment_by_name("mnist").experiment_id])) == 3


def test_a_store_mlflow_cannot_open_is_a_clear_error(
    store: mlflow.MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'not-a-folder' / 'mlflow.db'}")
    with pytest.raises(tracking.TrackingError, match="PIPELINE_TRACKING=off"):
        with tracking.stage_run(PARAMS, "mnist", "split"):
            tracking.log_metrics({"size_train": 10})


def test_tracking_off_starts_no_worker_and_has_no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_TRACKING", "off")
    monkeypatch.setattr(client, "_worker", None)
    tracking.warm_up()
    with tracking.stage_run(PARAMS, "mnist", "train") as run:
        tracking.log_metrics({"loss": 1.0})
    assert run.id is None and client._worker is None


def in_experiment(monkeypatch: pytest.MonkeyPatch, name: str | None) -> None:
    """Log as a stage of DVC experiment `name` does (None: the workspace): the worker reads DVC_EXP_NAME from the
    environment it starts in, as a stage's own worker does, so the next run gets a worker started in it."""
    if name is None:
        monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    else:
        monkeypatch.setenv("DVC_EXP_NAME", name)
    if client._worker is not None:
        client._worker.process.stdin.close()  # it exits when its input closes
        client._worker = None


def test_an_evaluation_that_reruns_alone_gets_its_own_run_and_leaves_the_train_run_as_it_was(
    store: mlflow.MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `dvc exp run -S evaluate.sample_images=12` does: train's run.json, then a second evaluate of it."""
    import keras

    in_experiment(monkeypatch, None)
    folder = model_folder(
        tmp_path / "trained",
        keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]),
        (4, 4, 1),
    )
    with tracking.stage_run(PARAMS, "mnist", "train", model="tiny") as run:
        tracking.log_params({"train": {"epochs": 2}})
        train_id = run.id
    with tracking.stage_run(PARAMS, "mnist", "evaluate", model="tiny", run_id=train_id) as run:  # the first one
        tracking.log_params({"evaluate": {"sample_images": 8}})
        tracking.log_model(folder, {"test_accuracy": 0.5})
        assert run.id == train_id
    baseline = store.get_run(train_id)
    assert baseline.data.tags["stage"] == "train+evaluate"

    in_experiment(monkeypatch, "more-samples")
    with tracking.stage_run(PARAMS, "mnist", "evaluate", model="tiny", run_id=train_id) as run:
        tracking.log_params({"evaluate": {"sample_images": 12}})  # what changed, beside the train run's params
        tracking.log_model(folder, {"test_accuracy": 0.6})
        evaluation_id = run.id
    assert evaluation_id != train_id
    after = store.get_run(train_id)
    assert (after.data.tags, after.data.params, after.data.metrics) == (
        baseline.data.tags,
        baseline.data.params,
        baseline.data.metrics,
    )
    experiment = baseline.info.experiment_id
    assert [m.source_run_id for m in store.search_logged_models([experiment])].count(train_id) == 1
    evaluation = store.get_run(evaluation_id)
    assert evaluation.data.tags["train_run_id"] == train_id and evaluation.data.tags["stage"] == "evaluate"
    assert evaluation.data.tags["dvc_experiment"] == "more-samples"
    assert evaluation.data.params["train.epochs"] == "2" and evaluation.data.params["evaluate.sample_images"] == "12"
    assert evaluation.data.metrics["test_accuracy"] == 0.6

    # Evaluated again in the workspace too (evaluate's code changed): the train run was evaluated already.
    in_experiment(monkeypatch, None)
    with tracking.stage_run(PARAMS, "mnist", "evaluate", model="tiny", run_id=train_id) as run:
        assert run.id not in (train_id, evaluation_id)
    assert store.get_run(train_id).data.tags == baseline.data.tags


def test_a_train_run_of_another_experiment_is_not_continued(
    store: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_experiment(monkeypatch, None)
    with tracking.stage_run(PARAMS, "mnist", "train", model="tiny") as run:
        train_id = run.id
    in_experiment(monkeypatch, "other")
    with tracking.stage_run(PARAMS, "mnist", "evaluate", model="tiny", run_id=train_id) as run:
        assert run.id != train_id
    assert store.get_run(train_id).data.tags["dvc_experiment"] == "workspace"
    assert store.get_run(train_id).data.tags["stage"] == "train"


def test_robustness_and_evaluate_share_the_train_run_in_either_order(
    store: mlflow.MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both measure the trained model; whichever runs first, one run holds both, tagged in the pipeline's order."""
    in_experiment(monkeypatch, None)
    with tracking.stage_run(PARAMS, "mnist", "train", model="tiny") as run:
        train_id = run.id
    with tracking.stage_run(PARAMS, "mnist", "robustness", model="tiny", run_id=train_id) as run:
        tracking.log_metrics({"corruption_accuracy": 0.7})
        assert run.id == train_id
    assert store.get_run(train_id).data.tags["stage"] == "train+robustness"
    with tracking.stage_run(PARAMS, "mnist", "evaluate", model="tiny", run_id=train_id) as run:
        assert run.id == train_id
    found = store.get_run(train_id)
    assert found.data.tags["stage"] == "train+evaluate+robustness" and found.data.metrics["corruption_accuracy"] == 0.7
    with tracking.stage_run(PARAMS, "mnist", "robustness", model="tiny", run_id=train_id) as run:  # measured again
        assert run.id != train_id
