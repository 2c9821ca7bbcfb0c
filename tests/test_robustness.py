"""The corruption benchmark: severities that grow, a benchmark that is the same bytes every time, mCE as
ImageNet-C defines it, and compare's columns and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.analysis import corruptions, robustness
from pipeline.core import files, paths
from pipeline.stages import compare, corrupt
from tests import test_stage
from tests.conftest import learnable_digits
from tests.test_compare import write_run
from tests.test_stage import one_error, run_stage, write_params

project = test_stage.project  # the fixture: a folder a stage runs in, with MNIST in a local source


def signs(count: int, seed: int = 0) -> np.ndarray:
    """32 x 32 colour images like cropped signs: a disc or a triangle of one colour with a symbol in
    another, on a textured background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:32, :32]
    images = rng.integers(40, 120, size=(count, 32, 32, 3)).astype(np.float32)
    for image in images:
        shape = rng.random() < 0.5
        inside = (
            (rows - 16) ** 2 + (cols - 16) ** 2 < 13**2 if shape else (rows > 5) & (abs(cols - 16) < (rows - 4) / 2)
        )
        image[inside] = rng.integers(0, 256, 3)
        image[(abs(rows - 16) < 2 + rng.integers(0, 4)) & inside] = rng.integers(0, 256, 3)
    return images.astype(np.uint8)


@pytest.mark.parametrize("kind", corruptions.names())
def test_each_corruptions_severity_grows(kind: str) -> None:
    """Mean SSIM to the clean images falls from severity 1 to 5, on digits and on signs."""
    digits, _ = learnable_digits(40, seed=3)
    for images in (digits[..., None], signs(40)):
        ssim = [
            corruptions.mean_ssim(images, corruptions.corrupted(images, kind, severity, seed=7))
            for severity in range(1, corruptions.SEVERITY_LEVELS + 1)
        ]
        assert all(a > b for a, b in zip(ssim, ssim[1:])), (kind, images.shape, [round(s, 4) for s in ssim])
        assert ssim[0] < 1.0, f"{kind} at severity 1 leaves the images as they were"


def test_the_benchmark_is_the_same_bytes_for_the_same_seed_and_keeps_every_kind_its_own_draw() -> None:
    images = signs(12)
    first, ssim = corrupt.benchmark(images, seed=5)
    again, _ = corrupt.benchmark(images, seed=5)
    other, _ = corrupt.benchmark(images, seed=6)
    assert first.shape == (len(corruptions.names()), corruptions.SEVERITY_LEVELS, *images.shape)
    assert first.dtype == np.uint8 and np.array_equal(first, again)
    noise = corruptions.names().index("gaussian_noise")
    assert not np.array_equal(first[noise], other[noise])
    # a kind's draw does not depend on the kinds before it
    assert np.array_equal(first[noise, 2], corruptions.corrupted(images, "gaussian_noise", 3, seed=5))
    assert set(ssim) == set(corruptions.names()) and all(len(v) == corruptions.SEVERITY_LEVELS for v in ssim.values())


def test_the_benchmarks_images_are_drawn_once_in_test_order() -> None:
    drawn = corrupt.draw_images(1000, 100, seed=42)
    assert (
        len(drawn) == 100 and np.all(np.diff(drawn) > 0) and np.array_equal(drawn, corrupt.draw_images(1000, 100, 42))
    )
    assert np.array_equal(corrupt.draw_images(50, 100, seed=42), np.arange(50))
    assert np.array_equal(corrupt.draw_images(50, None, seed=42), np.arange(50))


def result(clean: float, errors: list[list[float]]) -> dict:
    """A robustness.json with the given error rates (corruption x severity)."""
    kinds = [f"kind_{k}" for k in range(len(errors))]
    return {
        "images": 100,
        "clean_accuracy": clean,
        "corruption_accuracy": 1 - float(np.mean(errors)),
        "accuracy": {kind: {str(level + 1): 1 - e for level, e in enumerate(row)} for kind, row in zip(kinds, errors)},
    }


def test_mce_is_imagenet_cs_normalized_to_the_baseline() -> None:
    base = robustness.error_table([result(0.9, [[0.2, 0.4], [0.1, 0.1]])])
    half = robustness.error_table([result(0.95, [[0.1, 0.2], [0.05, 0.05]])])
    assert robustness.mce(base[0], base[0]) == pytest.approx(100)
    assert robustness.mce(half[0], base[0]) == pytest.approx(50)
    # growth over clean: (0.3 - 0.1) / (0.6 - 0.2) on the first corruption, (0.1 - 0.1) / (0.2 - 0.2) is
    # not defined on the second (it costs the baseline nothing), so only the first counts
    assert robustness.relative_mce(half[0], half[1], base[0], base[1]) == pytest.approx(100 * 0.2 / 0.4)
    # seeds are pooled: the mean of their error rates
    two = robustness.error_table([result(0.9, [[0.2, 0.4]]), result(0.8, [[0.4, 0.6]])])
    assert np.allclose(two[0], [[0.3, 0.5]]) and two[1] == pytest.approx(0.15)
    nothing = robustness.error_table([result(1.0, [[0.0, 0.0]])])
    assert robustness.mce(base[0][:1], nothing[0]) is None


@pytest.fixture
def benchmarked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three designs with robustness.json files: the baseline, one more robust, one less."""
    monkeypatch.chdir(tmp_path)
    for design, scale in (("lenet5_classic", 1.0), ("robust", 0.5), ("fragile", 1.5)):
        write_run("mnist", design, 1, np.arange(0, 10))
        files.write_json(
            paths.RunPaths("mnist", design, 1).robustness,
            result(0.975, [[min(1.0, scale * e) for e in (0.1, 0.2, 0.3, 0.4, 0.5)]] * 3),
        )
    return tmp_path


def test_compare_reports_mce_against_lenet5_classic_with_its_plots(benchmarked: Path) -> None:
    table = compare.collect(("mnist",), ("lenet5_classic", "robust", "fragile"), (1,), with_robustness=True)
    rows = {row["design"]: row for row in table["mnist"]["designs"]}
    assert rows["lenet5_classic"]["mce"] == pytest.approx(100)
    assert rows["robust"]["mce"] == pytest.approx(50)
    assert rows["fragile"]["mce"] == pytest.approx(150)
    assert rows["robust"]["corruption_accuracy"] == pytest.approx(1 - 0.5 * 0.3)
    assert rows["robust"]["corruption_accuracy_per_severity"] == pytest.approx([0.95, 0.9, 0.85, 0.8, 0.75])
    # error growth over its clean 0.025, summed over the severities, against the baseline's
    assert rows["robust"]["relative_mce"] == pytest.approx(100 * (0.75 - 5 * 0.025) / (1.5 - 5 * 0.025))
    assert rows["fragile"]["relative_mce"] > 100
    lines = compare.markdown(table).splitlines()
    assert next(line for line in lines if line.startswith("| rank")).endswith(
        "| corruption accuracy | mCE | relative mCE |"
    )
    assert next(line for line in lines if "| robust |" in line).endswith("| 0.8500 | 50.0 | 45.5 |")
    pngs = compare.report_figures("mnist", table["mnist"]["designs"])
    assert {"mnist_accuracy_vs_mce.png", "mnist_accuracy_vs_severity.png"} <= set(pngs)


def test_without_the_baseline_or_the_benchmark_the_columns_say_so(benchmarked: Path) -> None:
    table = compare.collect(("mnist",), ("robust", "fragile"), (1,), with_robustness=True)
    row = table["mnist"]["designs"][0]
    assert row["mce"] is None and row["corruption_accuracy"] is not None
    assert "mnist_accuracy_vs_mce.png" not in compare.report_figures("mnist", table["mnist"]["designs"])
    off = compare.collect(("mnist",), ("robust", "fragile"), (1,), with_robustness=False)
    assert all(row["corruption_accuracy"] is None and row["mce"] is None for row in off["mnist"]["designs"])
    assert "| – | – | – |" in compare.markdown(off)


def test_a_missing_robustness_file_names_the_stage_that_writes_it(benchmarked: Path) -> None:
    paths.RunPaths("mnist", "robust", 1).robustness.unlink()
    with pytest.raises(Exception, match=r"robustness\.json: missing; run `dvc repro`"):
        compare.collect(("mnist",), ("lenet5_classic", "robust"), (1,), with_robustness=True)


def test_the_corrupt_stage_freezes_the_benchmark_from_the_test_split(project: Path) -> None:
    write_params(project, **{"datasets.mnist.val_fraction": 0.2})  # a validation image per class of its 60
    assert [run_stage(stage, "mnist") for stage in ("download", "split", "corrupt")] == [0, 0, 0]
    arrays = files.load_arrays(paths.CORRUPTED / "mnist" / "images.npz")
    test = files.load_arrays(paths.SPLIT / "mnist" / "test.npz")
    assert arrays["x"].shape == (15, 5, *test["x"].shape) and np.array_equal(arrays["y"], test["y"])  # 20 < 1000
    meta = files.read_json(paths.CORRUPTED / "mnist" / "meta.json")
    assert [entry["name"] for entry in meta["corruptions"]] == list(corruptions.names()) and not meta["skipped"]
    before = (paths.CORRUPTED / "mnist" / "images.npz").read_bytes()
    assert run_stage("corrupt", "mnist") == 0
    assert (paths.CORRUPTED / "mnist" / "images.npz").read_bytes() == before  # the same bytes: DVC's hash holds


def test_experiments_robustness_false_skips_the_benchmark_and_its_measurements(project: Path) -> None:
    write_params(project, **{"experiments.robustness": False})
    assert run_stage("corrupt", "mnist") == 0
    assert files.read_json(paths.CORRUPTED / "mnist" / "meta.json")["skipped"]
    assert not (paths.CORRUPTED / "mnist" / "images.npz").exists()
    assert run_stage("robustness", "mnist", "lenet5_modern") == 0  # no model needed: nothing to measure
    assert files.read_json(paths.RunPaths("mnist", "lenet5_modern", 42).robustness) == {"skipped": True}


def test_a_bad_benchmark_size_is_one_line_naming_the_key(project: Path, capsys: pytest.CaptureFixture) -> None:
    write_params(project, **{"robustness.images": 0})
    assert run_stage("corrupt", "mnist") == 2
    assert one_error(capsys) == "error: params.yaml: robustness.images: must be a positive int, got 0"
