"""Recipes: learning-rate schedules at known steps, equalization on known arrays, recipe checks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipeline.config import load_params, parse_params
from pipeline.core.validate import ConfigError
from pipeline.portable.preprocess import equalized, prepare
from pipeline.training.schedules import Schedule, rate_at
from tests.conftest import REPO

PARAMS = load_params(REPO / "params.yaml")


def settings(**changes):
    return replace(PARAMS.train, **{"learning_rate": 0.1, "epochs": 10, **changes})


def test_constant_and_step_schedules() -> None:
    assert {rate_at(step, settings(), 5) for step in range(50)} == {0.1}
    step = settings(schedule="step", step_epochs=3, step_factor=0.5)
    assert [rate_at(e * 5, step, 5) for e in range(10)] == pytest.approx(
        [0.1] * 3 + [0.05] * 3 + [0.025] * 3 + [0.0125]
    )
    assert rate_at(14, step, 5) == pytest.approx(0.1) and rate_at(15, step, 5) == pytest.approx(0.05)


def test_cosine_warms_up_linearly_then_halves_at_mid_decay() -> None:
    cosine = settings(schedule="cosine", warmup_epochs=2)  # 10 steps of warm-up, then 40 of decay
    assert [rate_at(s, cosine, 5) for s in (0, 4, 9)] == pytest.approx([0.01, 0.05, 0.1])
    assert rate_at(10, cosine, 5) == pytest.approx(0.1)
    assert rate_at(30, cosine, 5) == pytest.approx(0.05)  # half way through the decay
    assert rate_at(49, cosine, 5) == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 39 / 40)))
    no_warmup = settings(schedule="cosine", warmup_epochs=0)
    assert rate_at(0, no_warmup, 5) == pytest.approx(0.1) and rate_at(25, no_warmup, 5) == pytest.approx(0.05)


def test_one_cycle_rises_to_the_peak_at_30_percent_then_anneals() -> None:
    cycle = settings(schedule="one_cycle")  # 100 steps: peak at step 30
    rates = [rate_at(s, cycle, 10) for s in range(100)]
    assert rates[0] == pytest.approx(0.1 / 25)
    assert max(rates) == pytest.approx(0.1) and int(np.argmax(rates)) == 30
    assert rates[15] == pytest.approx((0.1 + 0.004) / 2)  # half way up, cosine-shaped
    assert rates[-1] == pytest.approx(0.004 / 1e4)
    assert all(a >= b for a, b in zip(rates[30:], rates[31:]))


def test_the_optimizer_reads_the_same_rates() -> None:
    cosine = settings(schedule="cosine", warmup_epochs=1)
    schedule = Schedule.for_settings(cosine, 5)
    for step in (0, 3, 17, 49, 80):  # past the end it holds the last rate
        assert float(schedule(step)) == pytest.approx(rate_at(min(step, 49), cosine, 5), rel=1e-6)
    assert Schedule.from_config(schedule.get_config()).rates == schedule.rates


def gray(values: list[list[int]]) -> np.ndarray:
    return np.array(values, dtype=np.uint8)[np.newaxis, :, :, np.newaxis]


def test_histogram_equalization_stretches_levels_by_their_cdf() -> None:
    image = gray([[50, 50], [100, 200]])  # CDF 2, 3, 4 of 4 pixels; the darkest level goes to 0
    assert equalized(image, "histogram")[0, :, :, 0].tolist() == [[0, 0], [128, 255]]
    flat = gray([[77, 77], [77, 77]])
    assert np.array_equal(equalized(flat, "histogram"), flat)  # nothing to stretch
    assert np.array_equal(equalized(image, "none"), image)


def test_equalization_works_on_luminance_and_keeps_the_hue() -> None:
    rng = np.random.default_rng(0)
    dull = (rng.random((3, 16, 16, 1)) * 40 + 100).astype(np.float32)  # low contrast
    rgb = np.clip(np.concatenate([dull + 20, dull, dull - 20], axis=-1), 0, 255).astype(np.uint8)
    for method in ("histogram", "clahe"):
        out = equalized(rgb, method).astype(np.int16)
        assert out.std() > rgb.std() * 1.5, method  # more contrast
        red_minus_blue = (out[..., 0] - out[..., 2])[(out.max(-1) < 255) & (out.min(-1) > 0)]
        assert np.all(np.abs(red_minus_blue - 40) <= 2), method  # the same shift on every channel


def test_clahe_limits_the_contrast_it_adds() -> None:
    rng = np.random.default_rng(1)
    image = (rng.random((1, 32, 32, 1)) * 20 + 120).astype(np.uint8)  # noise in a narrow band
    histogram, clahe = equalized(image, "histogram"), equalized(image, "clahe")
    assert histogram.std() > clahe.std() > image.std()  # clipped: less noise amplified than global HE
    assert equalized(image, "clahe").shape == image.shape
    odd = (rng.random((2, 28, 28, 1)) * 255).astype(np.uint8)  # 28 is not a whole number of tiles
    assert equalized(odd, "clahe").shape == odd.shape


def test_equalization_of_39209_images_is_chunked_and_exact_per_image() -> None:
    rng = np.random.default_rng(2)
    images = (rng.random((5000, 8, 8, 3)) * 255).astype(np.uint8)
    whole = equalized(images, "clahe")
    assert np.array_equal(whole[4100:4103], equalized(images[4100:4103], "clahe"))  # no image sees another


def test_prepare_is_normalize_for_one_image() -> None:
    stats = {"equalize": "histogram", "grayscale": False, "pad_to": 4, "scale": [1 / 255], "offset": [0.0]}
    image = gray([[50, 50], [100, 200]])
    expected = [[0, 0, 0, 0], [0, 0, 0, 0], [0, 128 / 255, 1, 0], [0, 0, 0, 0]]
    assert np.allclose(prepare(image, stats)[0, :, :, 0], expected)


def raw_params(**train: object) -> dict:
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(train)
    return raw


def test_recipes_that_cannot_work_are_refused_when_params_load() -> None:
    with pytest.raises(ConfigError, match="warmup_epochs .* must be fewer than epochs"):
        parse_params(raw_params(schedule="cosine", warmup_epochs=10, epochs=10))
    with pytest.raises(ConfigError, match="models.lenet5_classic: label_smoothing applies to softmax"):
        parse_params(raw_params(label_smoothing=0.1))
    with pytest.raises(ConfigError, match=r"train.augment.rotation: must be a number in \[0.0, 180.0\]"):
        parse_params(raw_params(augment={**PARAMS.raw["train"]["augment"], "rotation": 200}))
    with pytest.raises(ConfigError, match="train.augment.mirror: unknown key"):
        parse_params(raw_params(augment={**PARAMS.raw["train"]["augment"], "mirror": True}))


def test_a_design_overrides_single_augment_keys() -> None:
    raw = raw_params(augment={**PARAMS.raw["train"]["augment"], "rotation": 10})
    raw["models"]["lenet5_modern"] = {"builtin": "lenet5_modern", "train": {"augment": {"zoom": 0.2}}}
    merged = parse_params(raw).train_settings("lenet5_modern", "mnist").augment
    assert merged.rotation == 10 and merged.zoom == 0.2 and merged.flip is False
