"""The train stage's input pipeline: every image once per epoch, reshuffled and jittered by (seed, epoch)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from pipeline.config import load_params
from pipeline.training.loop import batches, training_batches
from pipeline.training.recipe import AugmentSettings
from tests.conftest import REPO

SETTINGS = load_params(REPO / "params.yaml").train


def recipe(**changes):
    """The shipped train settings with `changes`; augment given as AugmentSettings keywords."""
    augment = changes.pop("augment", None)
    settings = replace(SETTINGS, **changes)
    return replace(settings, augment=AugmentSettings(**augment)) if augment is not None else settings


def epochs_of(dataset, steps: int) -> list[list[int]]:
    """The labels of each epoch of a training dataset, in the order they were served."""
    labels = [int(label) for _, y in dataset for label in y.numpy()]
    per_epoch = len(labels) // steps if steps else 0
    return [labels[i : i + per_epoch] for i in range(0, len(labels), per_epoch)]


def test_every_image_once_per_epoch_with_its_own_label() -> None:
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    y = np.arange(10)
    dataset = training_batches(x, y, recipe(batch_size=4, epochs=2), seed=1, first_epoch=0, pixel_scale=np.ones(1))
    served = list(dataset)
    assert [len(labels) for _, labels in served] == [4, 4, 2, 4, 4, 2]
    for images, labels in served:
        assert np.array_equal(images.numpy().reshape(-1), labels.numpy().astype(np.float32))
    first, second = epochs_of(dataset, 2)
    assert sorted(first) == sorted(second) == list(range(10)) and first != second


def test_epoch_order_depends_on_seed_and_epoch_only() -> None:
    """A run resumed at epoch 2 is served exactly the batches an uninterrupted one is."""
    x, y = np.zeros((50, 1, 1, 1), np.float32), np.arange(50)
    whole = epochs_of(training_batches(x, y, recipe(batch_size=8, epochs=3), 7, 0, np.ones(1)), 3)
    resumed = epochs_of(training_batches(x, y, recipe(batch_size=8, epochs=3), 7, 2, np.ones(1)), 1)
    assert resumed[0] == whole[2]
    assert epochs_of(training_batches(x, y, recipe(batch_size=8, epochs=3), 7, 0, np.ones(1)), 3) == whole
    other_seed = epochs_of(training_batches(x, y, recipe(batch_size=8, epochs=3), 8, 0, np.ones(1)), 3)
    assert other_seed != whole


def test_validation_batches_are_in_order_and_untouched() -> None:
    x = np.random.default_rng(0).random((20, 4, 4, 1), dtype=np.float32)
    y = np.arange(20)
    served = np.concatenate([images.numpy() for images, _ in batches(x, y, 8)])
    assert np.array_equal(served, x)
    assert [int(label) for _, labels in batches(x, y, 8) for label in labels.numpy()] == list(range(20))


JITTER = {
    "rotation": 15.0,
    "translation": 0.1,
    "zoom": 0.1,
    "shear": 5.0,
    "brightness": 0.1,
    "contrast": 0.2,
    "noise": 0.1,
}


def served_images(seed: int, augment: dict, first_epoch: int = 0, epochs: int = 1) -> np.ndarray:
    x = np.random.default_rng(0).random((16, 12, 12, 3), dtype=np.float32)
    y = np.arange(16)
    dataset = training_batches(
        x, y, recipe(batch_size=16, epochs=epochs, augment=augment), seed, first_epoch, np.full(3, 1 / 255, np.float32)
    )
    images, labels = list(dataset)[-1]
    return images.numpy()[np.argsort(labels.numpy())]  # back in the order of x


def test_augmentation_is_seeded_per_seed_and_epoch() -> None:
    same, again = served_images(1, JITTER), served_images(1, JITTER)
    assert np.array_equal(same, again)
    assert not np.allclose(same, served_images(2, JITTER))  # another seed, another batch
    second_epoch = served_images(1, JITTER, epochs=2)
    assert not np.allclose(same, second_epoch)  # another epoch, another jitter
    assert np.array_equal(second_epoch, served_images(1, JITTER, first_epoch=1, epochs=2))  # resumed: the same


def test_augmentation_off_serves_the_images_as_they_are() -> None:
    x = np.random.default_rng(0).random((16, 12, 12, 3), dtype=np.float32)
    assert np.array_equal(served_images(1, {}), x)
    jittered = served_images(1, JITTER)
    assert jittered.shape == x.shape and not np.allclose(jittered, x)


@pytest.mark.parametrize("key", sorted(JITTER))
def test_each_jitter_changes_images_within_its_range(key: str) -> None:
    x = np.random.default_rng(0).random((16, 12, 12, 3), dtype=np.float32)
    out = served_images(3, {key: JITTER[key]})
    assert not np.allclose(out, x)
    if key == "brightness":  # a shift of at most 10% of the 0..255 range, the same over an image
        shift = (out - x).reshape(16, -1)
        assert np.allclose(shift, shift[:, :1], atol=1e-5) and np.abs(shift).max() <= 0.1 + 1e-6
    if key == "noise":  # zero-mean pixel noise, its deviation drawn per image up to 10% of the range
        noise = (out - x).reshape(16, -1)
        deviations = noise.std(axis=1)
        assert np.abs(noise.mean()) < 0.01 and deviations.max() <= 0.1 * 1.3 and deviations.std() > 0.005


def test_noise_leaves_the_other_jitters_draws_as_they_were() -> None:
    """Adding noise to a recipe must not change the geometry every existing recipe's models were trained on."""
    geometry = {key: JITTER[key] for key in ("rotation", "translation", "zoom", "shear")}
    without, with_noise = served_images(4, geometry), served_images(4, geometry | {"noise": 1e-6})
    np.testing.assert_allclose(with_noise, without, atol=1e-5)


def test_flip_mirrors_left_right_when_asked_only() -> None:
    x = np.random.default_rng(0).random((16, 12, 12, 3), dtype=np.float32)
    flipped = served_images(5, {"flip": True})
    mirrored = [np.allclose(out, image[:, ::-1], atol=1e-5) for out, image in zip(flipped, x)]
    untouched = [np.allclose(out, image, atol=1e-5) for out, image in zip(flipped, x)]
    assert all(m or u for m, u in zip(mirrored, untouched)) and any(mirrored) and any(untouched)


def onednn_enabled_in_a_stage(**env: str) -> bool:
    """Whether TensorFlow runs its oneDNN kernels in a fresh process that imports the train stage."""
    probe = (
        "import pipeline.stages.train; from tensorflow.python.util import _pywrap_util_port as port; "
        "print(port.IsMklEnabled())"
    )
    clean = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return result.stdout.strip().splitlines()[-1] == "True"


def test_stages_train_on_onednn_kernels_unless_the_user_turns_them_off() -> None:
    # TensorFlow's default leaves them off on AVX2 CPUs, where they train LeNet-5 2.3x faster
    assert onednn_enabled_in_a_stage()
    assert not onednn_enabled_in_a_stage(TF_ENABLE_ONEDNN_OPTS="0")


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "smoothed", "rbf"])
def test_loss_and_accuracy_from_a_prediction_are_what_keras_evaluate_reports(loss: str) -> None:
    """The epoch's validation metrics and evaluate's test metrics come from one prediction, not a second pass."""
    from pipeline.portable import lenet5_classic as classic
    from pipeline.training.compile import SmoothedSparseCrossentropy, loss_and_accuracy

    rng = np.random.default_rng(6)
    x, y = rng.uniform(-0.1, 1.175, (300, 32, 32, 1)).astype("float32"), rng.integers(0, 10, 300).astype(np.uint8)
    model = classic.build_lenet5_classic(seed=3, output="rbf" if loss == "rbf" else "softmax")
    compiled = {"rbf": classic.loss_for("rbf"), "smoothed": SmoothedSparseCrossentropy(0.1)}.get(loss, loss)
    model.compile(optimizer="adam", loss=compiled, metrics=["accuracy"])
    model.train_on_batch(x[:32], y[:32])  # not at initialization, where every class scores alike
    keras_loss, keras_accuracy = model.evaluate(x, y, batch_size=128, verbose=0)
    ours = loss_and_accuracy(model, y, model.predict(x, batch_size=128, verbose=0))
    assert ours == pytest.approx((keras_loss, keras_accuracy), rel=1e-5)
