"""split: seeded, stratified, the test set untouched; normalize: the three scalings, fitted on train only."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import NormalizeParams
from pipeline.datasets import RawData
from pipeline.portable.preprocess import LECUN_BACKGROUND, LECUN_FOREGROUND, pad_to, to_grayscale
from pipeline.stages.normalize import normalize_splits
from pipeline.stages.split import class_counts, split_dataset, split_indices


def labels(per_class: int = 50, classes: int = 10) -> np.ndarray:
    return np.repeat(np.arange(classes), per_class)


def test_split_is_stratified_disjoint_and_complete() -> None:
    y = labels()
    train, val = split_indices(y, None, 0.2, seed=1)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(y)
    assert np.bincount(y[val]).tolist() == [10] * 10  # every class keeps its share


def test_split_is_reproducible_and_depends_on_the_seed() -> None:
    y = labels()
    first, again, other = (split_indices(y, None, 0.2, seed) for seed in (1, 1, 2))
    assert np.array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_grouped_images_never_straddle_train_and_validation() -> None:
    y = labels(per_class=60, classes=4)
    groups = np.arange(len(y)) // 30  # tracks of 30 frames, as GTSRB has
    train, val = split_indices(y, groups, 0.25, seed=3)
    assert not set(groups[train]) & set(groups[val])
    assert len(val) % 30 == 0 and len(val) > 0


def test_official_test_set_stays_the_test_set() -> None:
    rng = np.random.default_rng(0)
    raw = RawData(
        rng.integers(0, 255, (100, 4, 4, 1), dtype=np.uint8),
        labels(10),
        rng.integers(0, 255, (7, 4, 4, 1), dtype=np.uint8),
        np.arange(7) % 10,
    )
    splits = split_dataset(raw, 0.1, seed=0)
    assert np.array_equal(splits["test"]["x"], raw.test_x)
    assert len(splits["train"]["y"]) == 90 and len(splits["val"]["y"]) == 10
    assert class_counts(splits["val"]["y"], tuple("abcdefghij")) == dict.fromkeys("abcdefghij", 1)


def images(values: list[int], shape: tuple[int, ...] = (2, 2, 1)) -> dict[str, np.ndarray]:
    x = np.array(values, dtype=np.uint8).reshape(len(values), 1, 1, 1) * np.ones((1, *shape), np.uint8)
    return {"x": x, "y": np.zeros(len(values), np.int64)}


@pytest.mark.parametrize(("mode", "low", "high"), [("unit", 0.0, 1.0), ("lecun", LECUN_BACKGROUND, LECUN_FOREGROUND)])
def test_fixed_scalings_map_background_and_foreground(mode: str, low: float, high: float) -> None:
    out, stats, _ = normalize_splits(
        {"train": images([0, 255]), "val": images([0]), "test": images([255])},
        NormalizeParams(mode, None, False, "none"),
    )
    assert out["train"]["x"].dtype == np.float32
    assert out["val"]["x"].max() == pytest.approx(low) and out["test"]["x"].min() == pytest.approx(high)
    assert stats["mode"] == mode and stats["fitted_on"] == "train"


def test_standardize_fits_on_train_only() -> None:
    splits = {"train": images([10, 30]), "val": images([250]), "test": images([250])}
    out, stats, _ = normalize_splits(splits, NormalizeParams("standardize", None, False, "none"))
    assert out["train"]["x"].mean() == pytest.approx(0.0, abs=1e-6)
    assert out["train"]["x"].std() == pytest.approx(1.0, abs=1e-5)
    assert out["test"]["x"].max() == pytest.approx((250 - 20) / 10, rel=1e-5)  # train's mean 20, std 10
    assert len(stats["scale"]) == 1


def test_padding_centres_28_in_32_with_background() -> None:
    x = np.full((1, 28, 28, 1), 255, np.uint8)
    padded = pad_to(x, 32)
    assert padded.shape == (1, 32, 32, 1)
    assert padded[0, :2].max() == 0 and padded[0, -2:].max() == 0 and padded[0, 2:30, 2:30].min() == 255
    assert pad_to(np.zeros((1, 40, 40, 3), np.uint8), 32).shape == (1, 40, 40, 3)  # never crops


def test_padding_and_lecun_background_agree() -> None:
    digits = {name: images([255], (28, 28, 1)) for name in ("train", "val", "test")}
    out, _, _ = normalize_splits(digits, NormalizeParams("lecun", 32, False, "none"))
    assert out["train"]["x"].shape == (1, 32, 32, 1)
    assert out["train"]["x"][0, 0, 0, 0] == pytest.approx(LECUN_BACKGROUND)


def test_grayscale_uses_luma() -> None:
    rgb = np.array([[[[255, 0, 0], [0, 255, 0]]]], np.uint8)
    assert to_grayscale(rgb)[0, 0, :, 0].tolist() == [76, 150]
