"""The train stage's input pipeline: every image once per epoch, reshuffled, reproducibly."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from pipeline.train import batches
from tests.conftest import REPO


def epoch_labels(dataset) -> list[int]:
    return [int(label) for _, y in dataset for label in y.numpy()]


def test_every_image_once_per_epoch_with_its_own_label() -> None:
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    y = np.arange(10)
    for images, labels in batches(x, y, batch_size=4, seed=1):
        assert np.array_equal(images.numpy().reshape(-1), labels.numpy().astype(np.float32))
    assert sorted(epoch_labels(batches(x, y, 4, seed=1))) == list(range(10))
    assert [len(y) for _, y in batches(x, y, 4, seed=1)] == [4, 4, 2]


def test_reshuffled_every_epoch_and_reproducible_from_the_seed() -> None:
    x, y = np.zeros((50, 1, 1, 1), np.float32), np.arange(50)
    dataset = batches(x, y, 8, seed=7)
    first, second = epoch_labels(dataset), epoch_labels(dataset)
    assert first != second and sorted(first) == sorted(second)
    assert epoch_labels(batches(x, y, 8, seed=7)) == first
    assert epoch_labels(batches(x, y, 8, seed=None)) == list(range(50))  # validation: in order


def onednn_enabled_in_a_stage(**env: str) -> bool:
    """Whether TensorFlow runs its oneDNN kernels in a fresh process that imports the train stage."""
    probe = ("import pipeline.train; from tensorflow.python.util import _pywrap_util_port as port; "
             "print(port.IsMklEnabled())")
    clean = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env={**clean, **env},
                            capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1] == "True"


def test_stages_train_on_onednn_kernels_unless_the_user_turns_them_off() -> None:
    # TensorFlow's default leaves them off on AVX2 CPUs, where they train LeNet-5 2.3x faster
    assert onednn_enabled_in_a_stage()
    assert not onednn_enabled_in_a_stage(TF_ENABLE_ONEDNN_OPTS="0")
