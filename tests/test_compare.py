"""The compare stage on constructed metrics and predictions files: its format, numbers and ties."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ttest_ind

from pipeline.analysis import stats
from pipeline.core import files, paths
from pipeline.stages import compare

IMAGES = 400
LABELS = np.arange(IMAGES) % 10


def write_run(
    dataset: str,
    design: str,
    seed: int,
    wrong: np.ndarray,
    latency_ms: float = 1.0,
    int8_wrong: np.ndarray | None = None,
) -> None:
    """The files train and evaluate write for one seed, with the test images in `wrong` mispredicted (by the
    int8 model: those in `int8_wrong`, or as the float model; -1: no int8 model)."""
    run = paths.RunPaths(dataset, design, seed)
    predicted = LABELS.copy()
    predicted[wrong] = (LABELS[wrong] + 1) % 10
    if isinstance(int8_wrong, int):
        int8 = np.full(len(LABELS), int8_wrong)
    else:
        int8 = predicted.copy() if int8_wrong is None else LABELS.copy()
        if int8_wrong is not None:
            int8[int8_wrong] = (LABELS[int8_wrong] + 1) % 10
    files.write_json(
        run.metrics_dir / "train.json",
        {
            "params": 1000,
            "macs_per_image": 5000,
            "epochs_run": 2,
            "train_seconds": 10.0 + seed,
            "best_val_accuracy": 0.9,
        },
    )
    files.write_json(
        run.metrics_dir / "evaluate.json",
        {
            "test_accuracy": 1 - len(wrong) / IMAGES,
            "test_loss": 0.1 + len(wrong) / IMAGES,
            "test_macro_f1": 0.9,
            "predict_latency_ms": latency_ms,
            "predict_images_per_second": 5000.0,
            "model_bytes": 12345,
            "temperature": 1.5 + seed / 10,
            "int8_model_bytes": 3000 + seed,
            "int8_latency_ms_p50": 0.1 * seed,
            "int8_latency_ms_p95": 0.2 * seed,
        },
    )
    with files.atomic_file(run.history, "w") as handle:
        handle.write("epoch,val_accuracy\n1,0.8\n2,0.9\n")
    with files.atomic_file(run.predictions, "w") as handle:
        handle.write("index,label,predicted,confidence,calibrated_confidence,int8_predicted\n")
        handle.writelines(
            f"{i},{label},{guess},0.9,0.85,{quantized}\n"
            for i, (label, guess, quantized) in enumerate(zip(LABELS, predicted, int8))
        )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two seeds of three designs on one test set: `strong` and `close` differ by chance, `weak` does not."""
    monkeypatch.chdir(tmp_path)
    write_run("mnist", "strong", 1, np.arange(0, 10), latency_ms=1.0)
    write_run("mnist", "strong", 2, np.arange(0, 12), latency_ms=3.0)
    write_run("mnist", "close", 1, np.arange(5, 17))
    write_run("mnist", "close", 2, np.arange(5, 18))
    write_run("mnist", "weak", 1, np.arange(100, 160))
    write_run("mnist", "weak", 2, np.arange(100, 170))
    return tmp_path


def test_compare_json_has_the_documented_format_and_recomputable_numbers(project: Path) -> None:
    table = compare.collect(("mnist",), ("weak", "close", "strong"), (1, 2))
    assert set(table) == {"mnist"} and set(table["mnist"]) == {"designs", "pairwise_p"}
    rows = {row["design"]: row for row in table["mnist"]["designs"]}
    assert all(tuple(row) == compare.ROW_KEYS for row in rows.values())
    strong = rows["strong"]
    assert strong["seeds"] == [1, 2]
    assert strong["test_accuracy_per_seed"] == [1 - 10 / IMAGES, 1 - 12 / IMAGES]
    assert strong["test_accuracy"] == pytest.approx(1 - 11 / IMAGES)
    assert strong["test_accuracy_std"] == pytest.approx(np.std([390 / 400, 388 / 400], ddof=1))
    assert (strong["test_accuracy_min"], strong["test_accuracy_max"]) == (388 / 400, 390 / 400)
    low, high = strong["test_accuracy_ci"]
    assert low < strong["test_accuracy"] < high
    assert strong["latency_ms"] == 2.0 and strong["model_bytes"] == 12345  # medians over seeds
    assert strong["train_seconds"] == pytest.approx(11.5) and strong["params"] == 1000
    assert strong["val_accuracy_per_epoch"] == [[0.8, 0.9], [0.8, 0.9]]

    # The tests, redone from the same per-image scores.
    scores = {"strong": np.ones(IMAGES), "close": np.ones(IMAGES), "weak": np.ones(IMAGES)}
    scores["strong"][:10], scores["strong"][10:12] = 0, 0.5
    scores["close"][5:17], scores["close"][17] = 0, 0.5
    scores["weak"][100:160], scores["weak"][160:170] = 0, 0.5
    assert strong["test_accuracy_ci"] == list(stats.bootstrap_ci(scores["strong"]))
    expected_p = stats.mcnemar_exact(*stats.discordant(scores["close"], scores["strong"]))
    assert rows["close"]["p_value_vs_best"] == pytest.approx(expected_p)
    assert table["mnist"]["pairwise_p"]["close"]["strong"] == pytest.approx(expected_p)
    assert table["mnist"]["pairwise_p"]["weak"]["weak"] == 1.0
    holm = stats.holm([rows[name]["p_value_vs_best"] for name in ("weak", "close")])
    assert [rows["weak"]["p_value_vs_best_holm"], rows["close"]["p_value_vs_best_holm"]] == pytest.approx(holm)

    # Ties with the best share rank 1 and come first; the rest keep their place.
    assert [row["design"] for row in table["mnist"]["designs"]] == ["strong", "close", "weak"]
    assert strong["p_value_vs_best"] == 1.0 and strong["ties_best"] and strong["rank"] == 1
    assert rows["close"]["ties_best"] and rows["close"]["rank"] == 1
    assert not rows["weak"]["ties_best"] and rows["weak"]["rank"] == 3
    json.dumps(table, allow_nan=False)  # strict JSON: no NaN anywhere

    # The seed-level test: Welch's t on the per-seed accuracies against the best's.
    assert strong["p_value_seeds_vs_best"] == 1.0
    welch = ttest_ind([1 - 60 / IMAGES, 1 - 70 / IMAGES], [1 - 10 / IMAGES, 1 - 12 / IMAGES], equal_var=False)
    assert rows["weak"]["p_value_seeds_vs_best"] == pytest.approx(welch.pvalue)
    # two seeds are weak evidence: 50 more errors give only p ~ 0.05, where McNemar's p is < 1e-4
    assert rows["weak"]["p_value_seeds_vs_best"] < 0.1 < 0.3 < rows["close"]["p_value_seeds_vs_best"]


def test_each_row_says_how_its_design_was_trained(project: Path) -> None:
    recipes = {"mnist": {"strong": "unit scaling; 30 epochs", "weak": "unit scaling; 1 epoch"}}
    table = compare.collect(("mnist",), ("weak", "strong"), (1, 2), recipes)
    assert {row["design"]: row["recipe"] for row in table["mnist"]["designs"]} == recipes["mnist"]
    assert "- **strong**: unit scaling; 30 epochs" in compare.markdown(table)


def test_compare_md_draws_ties_as_ties_and_explains_its_methods(project: Path) -> None:
    report = compare.markdown(compare.collect(("mnist",), ("weak", "close", "strong"), (1, 2)))
    lines = report.splitlines()
    row = {line.split(" | ")[1]: line for line in lines if line.startswith("| 1") or line.startswith("| 3")}
    assert row["strong"].startswith("| 1= | strong | 2 | 0.9725 ± 0.0035 |") and "| best |" in row["strong"]
    assert row["close"].startswith("| 1= | close |")
    assert row["weak"].startswith("| 3 | weak |") and "< 0.0001" in row["weak"]
    assert "bootstrap" in report and "McNemar" in report and "Holm" in report and "sign test" in report
    assert "Pairwise exact McNemar p-values on mnist" in report


def test_one_seed_has_no_spread_and_a_lone_best_keeps_a_plain_rank_1(project: Path) -> None:
    table = compare.collect(("mnist",), ("weak", "strong"), (1,))
    strong, weak = table["mnist"]["designs"]
    assert strong["test_accuracy_std"] is None and strong["test_accuracy"] == 1 - 10 / IMAGES
    assert strong["test_accuracy_ci"] == list(stats.bootstrap_ci(np.r_[np.zeros(10), np.ones(IMAGES - 10)]))
    report = compare.markdown(table)
    assert "| 1 | strong | 1 | 0.9750 |" in report and "| 2 | weak |" in report
    assert weak["p_value_seeds_vs_best"] is None  # one seed: no seed-level test


def test_figures_draw_every_design(project: Path) -> None:
    rows = compare.collect(("mnist",), ("weak", "close", "strong"), (1, 2))["mnist"]["designs"]
    pngs = compare.report_figures("mnist", rows)
    assert set(pngs) == {
        "mnist_accuracy_vs_params.png",
        "mnist_accuracy_vs_latency.png",
        "mnist_seed_spread.png",
        "mnist_val_accuracy.png",
    }
    errorbars = pngs["mnist_accuracy_vs_latency.png"].axes[0].containers
    assert len(errorbars) == 3  # one interval per design
    spread = pngs["mnist_seed_spread.png"].axes[0]
    assert sum(len(c.get_offsets()) for c in spread.collections if hasattr(c, "get_offsets")) >= 6  # every seed


def test_a_search_s_front_is_drawn_with_the_compared_designs_marked_at_their_validation_accuracy(
    project: Path,
) -> None:
    rows = compare.collect(("mnist",), ("weak", "close", "strong"), (1, 2))["mnist"]["designs"]
    search = paths.SearchPaths("mnist").json
    search.parent.mkdir(parents=True)
    files.write_json(search, {"dataset": "mnist", "skipped": True})
    assert not any("search" in name for name in compare.report_figures("mnist", rows))  # none ran
    trials = [
        {"number": n, "ended": "completed", "val_accuracy": 0.9 + n / 100, "costs": {"macs": 1e6 * (n + 1)}}
        for n in range(3)
    ]
    files.write_json(
        search,
        {"objectives": ["val_accuracy", "macs"], "trials": trials, "front": [0, 1, 2], "finalists": {"f": 2}},
    )
    axis = compare.report_figures("mnist", rows)["mnist_search_pareto_macs.png"].axes[0]
    marked = {text.get_text() for text in axis.texts}
    assert {"weak", "close", "strong", "#2"} <= marked
    points = {tuple(map(float, c.get_offsets()[0])) for c in axis.collections if len(c.get_offsets()) == 1}
    for row in rows:  # at its MACs and its mean best validation accuracy, never its test accuracy
        assert (float(row["macs_per_image"]), float(row["best_val_accuracy"])) in points


def test_a_missing_or_foreign_prediction_file_is_named(project: Path) -> None:
    paths.RunPaths("mnist", "weak", 2).predictions.unlink()
    with pytest.raises(FileNotFoundError, match=r"metrics/mnist/weak/seed_2/predictions.csv: missing; run `dvc repro`"):
        compare.collect(("mnist",), ("weak", "strong"), (1, 2))
    write_run("mnist", "weak", 2, np.arange(3))
    other = paths.RunPaths("mnist", "weak", 2).predictions
    other.write_text(other.read_text().replace("\n1,1,", "\n1,7,", 1))  # image 1 has another label here
    with pytest.raises(ValueError, match=r"seed_2/predictions.csv: its test labels differ from .*different test sets"):
        compare.collect(("mnist",), ("strong", "weak"), (1, 2))
    other.write_text("index,label\n0,1\n")
    with pytest.raises(
        ValueError, match="header must be index,label,predicted,confidence,calibrated_confidence,int8_predicted"
    ):
        compare.collect(("mnist",), ("weak",), (2,))


def test_calibration_is_recomputed_from_each_seeds_confidences(project: Path) -> None:
    """Every prediction has confidence 0.9 (0.85 once scaled): a seed's ECE is |its accuracy - 0.9|."""
    rows = {row["design"]: row for row in compare.collect(("mnist",), ("strong", "weak"), (1, 2))["mnist"]["designs"]}
    strong = rows["strong"]
    accuracies = strong["test_accuracy_per_seed"]
    assert strong["test_ece"] == pytest.approx(np.mean([abs(a - 0.9) for a in accuracies]))
    assert strong["test_ece_calibrated"] == pytest.approx(np.mean([abs(a - 0.85) for a in accuracies]))
    assert strong["temperature"] == pytest.approx(1.65)  # the seeds' mean


def test_int8_is_compared_with_its_float_model_on_the_same_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """seed 1's int8 model errs on 10 more images than its float model, seed 2's on the same ones; a design
    without int8 models shows none."""
    monkeypatch.chdir(tmp_path)
    write_run("mnist", "quantized", 1, np.arange(0, 10), int8_wrong=np.arange(0, 20))
    write_run("mnist", "quantized", 2, np.arange(0, 10))
    write_run("mnist", "classic", 1, np.arange(0, 30), int8_wrong=-1)
    write_run("mnist", "classic", 2, np.arange(0, 30), int8_wrong=-1)
    rows = {
        row["design"]: row for row in compare.collect(("mnist",), ("quantized", "classic"), (1, 2))["mnist"]["designs"]
    }
    quantized = rows["quantized"]
    assert quantized["int8_test_accuracy"] == pytest.approx(1 - 15 / IMAGES)
    assert quantized["int8_accuracy_change"] == pytest.approx(-5 / IMAGES)
    # pooled over seeds: 10 images scored 1/2 by int8 and 1 by float, none the other way
    assert quantized["int8_p_value_vs_float"] == pytest.approx(2 * 0.5**10)
    assert quantized["int8_model_bytes"] == 3001.5 and quantized["int8_latency_ms_p95"] == pytest.approx(0.3)
    assert all(rows["classic"][key] is None for key in compare.ROW_KEYS if key.startswith("int8_"))
    assert "| – |" in compare.markdown(compare.collect(("mnist",), ("quantized", "classic"), (1, 2)))
