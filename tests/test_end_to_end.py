"""`dvc repro`, `dvc exp run` and the queue, in a throwaway copy of the project on tiny data."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pytest

from pipeline.analysis import stats
from pipeline.core import files
from pipeline.core.paths import RunPaths
from tests.conftest import TINY_PROJECT_MODELS, run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

MODEL = TINY_PROJECT_MODELS[0]
SEED = 42  # the default experiments.seeds: [42]


@pytest.fixture
def project(tiny_project: Path) -> Path:
    return tiny_project


def client(repo: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def model_runs(repo: Path, model: str = MODEL, **tags: str) -> list:
    experiment = client(repo).get_experiment_by_name("mnist")
    assert experiment is not None, "no MLflow experiment named after the dataset"
    query = " and ".join([f"tags.model = '{model}'"] + [f"tags.{k} = '{v}'" for k, v in tags.items()])
    return client(repo).search_runs([experiment.experiment_id], query)


def test_repro_writes_every_stage_output(project: Path) -> None:
    for path in (
        "data/raw/mnist/MANIFEST.json",
        "data/split/mnist/train.npz",
        "data/split/mnist/counts.json",
        "data/normalized/mnist/test.npz",
        "data/normalized/mnist/stats.json",
        f"models/mnist/{MODEL}/seed_42/model.keras",
        f"models/mnist/{MODEL}/seed_42/architecture.md",
        f"plots/history/mnist/{MODEL}/seed_42.csv",
        f"plots/confusion/mnist/{MODEL}/seed_42.csv",
        f"metrics/mnist/{MODEL}/seed_42/predictions.csv",
        f"metrics/mnist/{MODEL}/seed_42/robustness.json",
        "data/corrupted/mnist/images.npz",
        *(
            f"plots/figures/mnist/{MODEL}/seed_42/{name}.png"
            for name in (
                "learning_curves",
                "confusion",
                "samples",
                "mistakes",
                "reliability",
                "filters",
                "feature_maps",
            )
        ),
    ):
        assert (project / path).is_file(), path
    split = np.load(project / "data/split/mnist/train.npz", allow_pickle=False)
    assert split["x"].dtype == np.uint8 and split["x"].shape[1:] == (28, 28, 1)
    counts = json.loads((project / "data/split/mnist/counts.json").read_text())
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == 400
    assert sum(counts["test"].values()) == 100
    normalized = np.load(project / "data/normalized/mnist/train.npz", allow_pickle=False)
    assert normalized["x"].shape[1:] == (32, 32, 1)
    corrupted = np.load(project / "data/corrupted/mnist/images.npz", allow_pickle=False)
    assert corrupted["x"].shape == (15, 5, 20, 28, 28, 1) and corrupted["x"].dtype == np.uint8
    assert np.array_equal(split_test_labels(project)[corrupted["index"]], corrupted["y"])


def split_test_labels(project: Path) -> np.ndarray:
    return np.load(project / "data/split/mnist/test.npz", allow_pickle=False)["y"]


def test_every_model_is_measured_on_the_corruption_benchmark_and_compared_by_it(project: Path) -> None:
    measured = json.loads((project / RunPaths("mnist", MODEL, SEED).robustness).read_text())
    assert measured["images"] == 20 and len(measured["accuracy"]) == 15
    assert all(set(levels) == {"1", "2", "3", "4", "5"} for levels in measured["accuracy"].values())
    (found,) = model_runs(project, dvc_experiment="workspace")
    assert found.data.tags["stage"] == "train+evaluate+robustness"  # one run per model holds all three
    assert found.data.metrics["corruption_accuracy"] == pytest.approx(measured["corruption_accuracy"])
    rows = json.loads((project / "reports/compare.json").read_text())["mnist"]["designs"]
    for row in rows:  # LeNet-5 classic, the baseline of mCE, is not among the tiny project's designs
        assert 0 <= row["corruption_accuracy"] <= 1 and row["mce"] is None
    assert (project / "reports/mnist_accuracy_vs_severity.png").is_file()


def test_metrics_are_readable_by_dvc(project: Path) -> None:
    evaluated = json.loads((project / RunPaths("mnist", MODEL, SEED).metrics_dir / "evaluate.json").read_text())
    assert 0.0 <= evaluated["test_accuracy"] <= 1.0 and evaluated["test_images"] == 100
    # the cost of a prediction, measured
    assert evaluated["predict_latency_ms"] > 0 and evaluated["predict_images_per_second"] > 0
    # calibration before and after the temperature evaluate fitted on validation
    assert evaluated["temperature"] > 0 and 0 <= evaluated["test_ece_calibrated"] <= 1
    assert {"test_ece", "test_mce", "test_nll", "test_brier", "test_nll_calibrated"} <= set(evaluated)
    # the int8 model beside the float one, and how it compares
    assert (project / RunPaths("mnist", MODEL, SEED).model_dir.with_name("seed_42_int8") / "model.tflite").is_file()
    assert (
        evaluated["int8_model_bytes"] > 0 and 0 < evaluated["int8_latency_ms_p50"] <= evaluated["int8_latency_ms_p95"]
    )
    assert 0 <= evaluated["int8_mcnemar_p"] <= 1
    model_file = project / RunPaths("mnist", MODEL, SEED).model_dir / "model.keras"
    assert evaluated["model_bytes"] == model_file.stat().st_size
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    flat = json.dumps(shown)
    assert "test_accuracy" in flat and "best_val_accuracy" in flat


def test_plots_render_learning_curves_and_confusion(project: Path) -> None:
    shown = json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)
    assert not shown.get("errors"), shown["errors"]
    out = RunPaths("mnist", MODEL, SEED)
    curves = shown["data"][str(out.history)][0]["content"]["data"]["values"]
    assert {row["field"] for row in curves} >= {"accuracy", "val_accuracy", "loss", "val_loss"}
    confusion = shown["data"][str(out.confusion)][0]["content"]["data"]["values"]
    assert len(confusion) == 100 and {"actual", "predicted"} <= set(confusion[0])
    assert str(out.figures / "samples.png") in shown["data"]
    run(["dvc", "plots", "show", "-o", "dvc_plots"], project)
    html = (project / "dvc_plots/index.html").read_text()
    assert "Learning curves (train and validation)" in html and "Confusion matrix (test set)" in html
    assert "samples.png" in html


def test_mlflow_run_holds_params_metrics_figures_and_model(project: Path) -> None:
    runs = model_runs(project, dvc_experiment="workspace")
    assert len(runs) == 1
    found = runs[0]
    assert found.data.tags["dataset"] == "mnist" and found.data.tags["dvc_experiment"] == "workspace"
    assert found.data.tags["git_commit"] != "unknown"
    assert found.data.params["train.epochs"] == "1" and found.data.params["seed"] == "42"
    assert found.data.tags["seed"] == "42" and found.data.params["split_seed"] == "42"
    assert {"test_accuracy", "test_loss", "val_accuracy", "best_val_accuracy"} <= set(found.data.metrics)
    # what the run trained, was validated and tested on, as MLflow's datasets (the UI's Datasets column)
    inputs = {
        entry.dataset.name: (entry.dataset.digest, {tag.key: tag.value for tag in entry.tags}["mlflow.data.context"])
        for entry in client(project).get_run(found.info.run_id).inputs.dataset_inputs
    }
    assert {name: context for name, (_, context) in inputs.items()} == {
        "mnist-train": "training",
        "mnist-val": "validation",
        "mnist-test": "testing",
    }
    assert inputs["mnist-test"][0] == files.md5_of(project / "data/normalized/mnist/test.npz")[:10]
    history = client(project).get_metric_history(found.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1]
    artifacts = {a.path for a in client(project).list_artifacts(found.info.run_id, "figures")}
    assert {"figures/learning_curves.png", "figures/confusion.png", "figures/samples.png"} <= artifacts
    reports = {a.path for a in client(project).list_artifacts(found.info.run_id, "reports")}
    assert {
        "reports/history.csv",
        "reports/confusion.csv",
        "reports/architecture.md",
        "reports/summary.txt",
        "reports/per_class.json",
        "reports/predictions.csv",
    } <= reports
    assert (project / "mlruns" / "mnist").is_dir(), "artifacts must live under <repo>/mlruns/<dataset>"
    logged = client(project).search_logged_models([found.info.experiment_id])
    mine = [m for m in logged if m.source_run_id == found.info.run_id]
    assert len(mine) == 1, "the model is not logged with its run"
    where = urlparse(mine[0].artifact_location).path
    signature = mlflow.models.Model.load(where).signature  # how users call the model: raw pixels, as decoded
    assert signature.inputs.inputs[0].shape == (-1, 28, 28, 1) and signature.outputs.inputs[0].shape == (-1, 10)
    assert signature.inputs.inputs[0].type == np.dtype(np.uint8)
    requirements = (Path(where) / "requirements.txt").read_text()  # what loads it elsewhere
    assert "keras==" in requirements and "tensorflow==" in requirements
    model_metrics = {metric.key: metric.value for metric in mine[0].metrics or []}
    assert model_metrics["test_accuracy"] == found.data.metrics["test_accuracy"], "test metrics not on the model"
    data_runs = client(project).search_runs([found.info.experiment_id], "tags.stage = 'split'")
    assert data_runs and data_runs[0].data.metrics["size_train"] + data_runs[0].data.metrics["size_val"] == 400


def accuracy_from_predictions(project: Path, design: str, seed: int) -> float:
    rows = (project / RunPaths("mnist", design, seed).predictions).read_text().splitlines()
    assert rows[0] == "index,label,predicted,confidence,calibrated_confidence,int8_predicted" and len(rows) == 101
    cells = [row.split(",") for row in rows[1:]]
    assert [int(index) for index, *_ in cells] == list(range(100))
    return sum(label == predicted for _, label, predicted, *_ in cells) / 100


def test_compare_ranks_every_design_with_its_interval_and_test(project: Path) -> None:
    entry = json.loads((project / "reports/compare.json").read_text())["mnist"]
    rows = entry["designs"]
    assert sorted(row["design"] for row in rows) == sorted(TINY_PROJECT_MODELS)
    assert set(entry["pairwise_p"]) == set(TINY_PROJECT_MODELS)
    for row in rows:  # the table is recomputable from each design's own files
        evaluated = json.loads(
            (project / RunPaths("mnist", row["design"], SEED).metrics_dir / "evaluate.json").read_text()
        )
        assert row["seeds"] == [SEED] and row["test_accuracy_std"] is None
        assert row["test_accuracy"] == accuracy_from_predictions(project, row["design"], SEED)
        assert row["test_accuracy"] == pytest.approx(evaluated["test_accuracy"], abs=1e-6)
        assert row["test_accuracy_ci"][0] <= row["test_accuracy"] <= row["test_accuracy_ci"][1]
        assert row["latency_ms"] == evaluated["predict_latency_ms"] and row["params"] > 0
    best = rows[0]
    assert best["ties_best"] and best["p_value_vs_best"] == 1.0 and best["rank"] == 1
    other = rows[1]
    assert other["p_value_vs_best"] == entry["pairwise_p"][other["design"]][best["design"]]
    assert other["ties_best"] == (other["p_value_vs_best_holm"] >= stats.ALPHA)
    report = (project / "reports/compare.md").read_text()
    assert "| rank | design | seeds | test accuracy | 95% CI |" in report
    assert report.index(f"| {best['design']} |") < report.index(f"| {other['design']} |")
    for name in (
        "mnist_accuracy_vs_params.png",
        "mnist_accuracy_vs_latency.png",
        "mnist_seed_spread.png",
        "mnist_val_accuracy.png",
    ):
        assert (project / "reports" / name).stat().st_size > 1000


def test_second_repro_is_a_no_op(project: Path) -> None:
    output = run(["dvc", "repro"], project).stdout
    assert "didn't change" in output or "is cached" in output
    assert "Running stage" not in output


def test_editing_one_design_from_the_command_line_reruns_only_its_stages(project: Path) -> None:
    edited = "student_b"
    assert edited in TINY_PROJECT_MODELS and edited != MODEL
    output = run(["dvc", "exp", "run", "-n", "narrow-b", "-S", f"models.{edited}.layers.0.filters=8"], project).stdout
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    assert ran == {f"{stage}@mnist-{edited}-{SEED}" for stage in ("train", "evaluate", "robustness")} | {"compare"}, (
        output
    )
    (narrowed,) = model_runs(project, edited, dvc_experiment="narrow-b")
    assert narrowed.data.params["design_spec.layers.0.filters"] == "8"


def test_exp_run_and_queue_log_into_the_workspace_store(project: Path) -> None:
    run(["dvc", "exp", "run", "-n", "two-epochs", "-S", "train.epochs=2"], project)
    shown = run(["dvc", "exp", "show", "--json"], project).stdout
    assert "two-epochs" in shown
    (tagged,) = model_runs(project, dvc_experiment="two-epochs")
    assert tagged.data.params["train.epochs"] == "2"

    run(["dvc", "exp", "run", "--queue", "-n", "queued-bs16", "-S", "train.batch_size=16"], project)
    run(["dvc", "queue", "start"], project)
    run(["dvc", "queue", "logs", "queued-bs16", "--follow"], project)
    (queued,) = model_runs(project, dvc_experiment="queued-bs16")
    assert queued.data.params["train.batch_size"] == "16"
    assert not list((project / ".dvc" / "tmp" / "exps").rglob("mlflow.db")), "a queued run wrote its own store"


def test_an_experiment_that_reruns_only_evaluate_leaves_the_baseline_run_as_it_was(project: Path) -> None:
    """`dvc exp run -S evaluate.sample_images=12`: the models are the baseline's, their runs must not change;
    each new evaluation is a run of its own, linked to the train run whose model it evaluated."""
    train_ids = {
        design: json.loads((project / RunPaths("mnist", design, SEED).model_dir / "run.json").read_text())["run_id"]
        for design in TINY_PROJECT_MODELS
    }
    store = client(project)

    def snapshot(run_id: str) -> tuple:
        found = store.get_run(run_id)
        models = [
            m.model_id for m in store.search_logged_models([found.info.experiment_id]) if m.source_run_id == run_id
        ]
        return found.data.tags, found.data.params, found.data.metrics, found.info.status, sorted(models)

    before = {design: snapshot(run_id) for design, run_id in train_ids.items()}
    output = run(["dvc", "exp", "run", "-n", "more-samples", "-S", "evaluate.sample_images=12"], project).stdout
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    evaluations = {f"evaluate@mnist-{design}-{SEED}" for design in TINY_PROJECT_MODELS}
    assert evaluations <= ran <= evaluations | {"compare"}, output  # compare only if a metric changed
    for design, run_id in train_ids.items():
        assert snapshot(run_id) == before[design], f"the baseline run of {design} changed"
        (evaluation,) = model_runs(project, design, dvc_experiment="more-samples")
        assert evaluation.info.run_id != run_id and evaluation.data.tags["train_run_id"] == run_id
        assert evaluation.data.params["evaluate.sample_images"] == "12"
        assert evaluation.data.params["design"] == design  # the train run's params, for comparing it on its own
        assert "test_accuracy" in evaluation.data.metrics


def model_weights(model_file: Path) -> dict[str, np.ndarray]:
    """The weights inside a saved .keras file (a zip holding model.weights.h5), read without Keras."""
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(model_file) as archive:
        data = archive.read("model.weights.h5")
    weights: dict[str, np.ndarray] = {}
    with h5py.File(io.BytesIO(data), "r") as h5:
        h5.visititems(
            lambda name, node: weights.__setitem__(name, node[()]) if isinstance(node, h5py.Dataset) else None
        )
    return weights


def test_a_second_seed_trains_only_that_seed_and_compare_reports_the_spread(project: Path) -> None:
    """Last in this file: it leaves the workspace at two seeds."""
    output = run(["dvc", "exp", "run", "-n", "two-seeds", "-S", "experiments.seeds=[42,7]"], project).stdout
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    assert ran == {
        f"{stage}@mnist-{design}-7" for stage in ("train", "evaluate", "robustness") for design in TINY_PROJECT_MODELS
    } | {"compare"}, output

    first, second = (project / RunPaths("mnist", MODEL, seed).model_dir / "model.keras" for seed in (SEED, 7))
    a, b = model_weights(first), model_weights(second)
    assert a.keys() == b.keys() and any(not np.array_equal(a[key], b[key]) for key in a), "same weights for two seeds"
    (seven,) = model_runs(project, dvc_experiment="two-seeds")
    assert seven.data.tags["seed"] == "7" and seven.data.params["seed"] == "7"
    assert (
        json.loads((project / RunPaths("mnist", MODEL, 7).model_dir / "run.json").read_text())["run_id"]
        == seven.info.run_id
    )
    assert (
        json.loads((project / RunPaths("mnist", MODEL, SEED).model_dir / "run.json").read_text())["run_id"]
        != seven.info.run_id
    )

    report = (project / "reports/compare.md").read_text()
    for row in json.loads((project / "reports/compare.json").read_text())["mnist"]["designs"]:
        assert f"| {row['design']} | 2 | " in report  # its seeds column
        per_seed = [accuracy_from_predictions(project, row["design"], seed) for seed in (SEED, 7)]
        assert row["seeds"] == [SEED, 7] and row["test_accuracy_per_seed"] == per_seed
        assert row["test_accuracy"] == pytest.approx(np.mean(per_seed))
        assert row["test_accuracy_std"] == pytest.approx(np.std(per_seed, ddof=1))
        assert (row["test_accuracy_min"], row["test_accuracy_max"]) == (min(per_seed), max(per_seed))


def test_compare_registers_the_best_design_as_the_datasets_first_champion(project: Path) -> None:
    best = json.loads((project / "reports/compare.json").read_text())["mnist"]["designs"][0]["design"]
    champion = client(project).get_model_version_by_alias("mnist", "champion")
    assert (champion.tags["design"], champion.tags["seed"]) == (best, str(SEED))
    assert champion.tags["champion_decision"] == "the first champion"
