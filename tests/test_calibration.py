"""Calibration scores and temperature scaling on synthetic predictions whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analysis import calibration


def confident(n: int, classes: int, confidence: float, right: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` predictions of confidence `confidence` on class 0, `right` of them correct."""
    probabilities = np.full((n, classes), (1 - confidence) / (classes - 1))
    probabilities[:, 0] = confidence
    labels = np.where(np.arange(n) < right, 0, 1)
    return probabilities, np.random.default_rng(seed).permutation(labels)


def test_a_model_as_right_as_it_is_sure_has_no_calibration_error() -> None:
    probabilities, labels = confident(1000, 10, 0.8, 800)
    ece, mce = calibration.calibration_errors(probabilities, labels)
    assert ece == pytest.approx(0.0, abs=1e-12) and mce == pytest.approx(0.0, abs=1e-12)


def test_ece_weighs_each_bins_gap_by_its_images_and_mce_takes_the_largest() -> None:
    sure, sure_labels = confident(300, 10, 0.95, 150)  # bin (14/15, 1]: gap 0.45
    unsure, unsure_labels = confident(700, 10, 0.5, 350)  # bin (7/15, 8/15]: gap 0
    probabilities, labels = np.vstack([sure, unsure]), np.concatenate([sure_labels, unsure_labels])
    ece, mce = calibration.calibration_errors(probabilities, labels)
    assert ece == pytest.approx(0.3 * 0.45) and mce == pytest.approx(0.45)
    count, confidence, accuracy = calibration.calibration_bins(
        probabilities.max(axis=1), probabilities.argmax(1) == labels
    )
    assert count.sum() == 1000 and count[14] == 300 and count[7] == 700
    assert confidence[14] == pytest.approx(0.95) and accuracy[14] == pytest.approx(0.5)


def test_nll_and_brier_of_a_perfect_and_of_a_uniform_model() -> None:
    labels = np.arange(10) % 4
    perfect = np.eye(4)[labels]
    assert calibration.nll(perfect, labels) == pytest.approx(0.0) and calibration.brier(perfect, labels) == 0.0
    uniform = np.full((10, 4), 0.25)
    assert calibration.nll(uniform, labels) == pytest.approx(np.log(4))
    assert calibration.brier(uniform, labels) == pytest.approx(1 - 1 / 4)


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_temperature_scaling_finds_the_temperature_the_labels_were_drawn_at_and_keeps_every_prediction(
    true_temperature: float,
) -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, size=(20000, 10))
    truth = calibration.scaled(logits, true_temperature)  # labels drawn from softmax(z / T)
    labels = (truth.cumsum(axis=1) > rng.random((len(logits), 1))).argmax(axis=1)
    overconfident = calibration.scaled(logits, 1.0)  # the model reports softmax(z)

    fitted = calibration.fit_temperature(calibration.log_probabilities(overconfident), labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    calibrated = calibration.scaled(calibration.log_probabilities(overconfident), fitted)
    assert np.array_equal(calibrated.argmax(axis=1), overconfident.argmax(axis=1))  # accuracy identical
    before = calibration.scores(overconfident, labels)
    after = calibration.scores(calibrated, labels)
    assert after["nll"] <= before["nll"] + 1e-12
    assert after["ece"] < 0.02
    if true_temperature != 1.0:
        assert after["ece"] < before["ece"] / 2


def test_an_rbf_output_with_a_rubbish_class_becomes_a_distribution_over_the_classes() -> None:
    """LeNet-5 classic: p_i = exp(-y_i) / (exp(-j) + sum exp(-y_k)); its calibrated p is softmax(-y / T)."""
    penalties = np.array([[3.0, 40.0, 90.0], [600.0, 610.0, 625.0]])
    rubbish = 0.1
    raw = np.exp(-penalties) / (np.exp(-rubbish) + np.exp(-penalties).sum(axis=1, keepdims=True))
    assert raw[1].max() < 1e-200  # a correct answer can look hopeless in the raw output
    calibrated = calibration.scaled(calibration.log_probabilities(raw), 10.0)
    expected = np.exp(-penalties / 10) / np.exp(-penalties / 10).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(calibrated, expected, rtol=1e-9)
    assert np.array_equal(calibrated.argmax(axis=1), raw.argmax(axis=1))


def test_evaluate_refuses_validation_outputs_of_another_split_and_says_how_to_fix_it(tmp_path, monkeypatch) -> None:
    """The temperature is fitted on the outputs train saved: outputs of another split would pair images
    with the wrong labels, so evaluate stops and names the file and the stage to re-run."""
    from pipeline.core import files, paths
    from pipeline.core.errors import UserError
    from pipeline.stages import evaluate

    monkeypatch.chdir(tmp_path)
    out = paths.RunPaths("mnist", "lenet5_modern", 42)
    out.model_dir.mkdir(parents=True)
    (paths.NORMALIZED / "mnist").mkdir(parents=True)
    files.save_arrays(paths.NORMALIZED / "mnist" / "val.npz", x=np.zeros((6, 4, 4, 1), np.float32), y=np.arange(6))
    files.save_arrays(out.validation_outputs, outputs=np.full((6, 10), 0.1, np.float32))
    outputs, labels = evaluate.validation_outputs(out)
    assert outputs.shape == (6, 10) and list(labels) == list(range(6))
    files.save_arrays(out.validation_outputs, outputs=np.full((5, 10), 0.1, np.float32))
    with pytest.raises(
        UserError, match=r"validation_outputs\.npz: outputs for 5 validation images, but the split has 6"
    ):
        evaluate.validation_outputs(out)
    with pytest.raises(UserError, match=r"dvc repro train@mnist-lenet5_modern-42"):
        evaluate.validation_outputs(out)
