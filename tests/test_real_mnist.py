"""The whole pipeline on the real MNIST from ../shared/datasets: LeNet-5 modern must really learn it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATASETS, copy_project, run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(not (SHARED_DATASETS / "mnist").is_dir(), reason="../shared/datasets/mnist absent"),
]


def test_lenet5_modern_reaches_98_percent_on_real_mnist(tmp_path: Path) -> None:
    repo = copy_project(
        tmp_path / "repo",
        {
            "download.mirror": str(SHARED_DATASETS),
            "train.epochs": 4,
            "experiments.datasets": ["mnist"],
            "experiments.models": ["lenet5_modern"],
            "experiments.robustness": False,  # the corruption benchmark has tests of its own
        },
    )
    run(["dvc", "repro"], repo)
    manifest = json.loads((repo / "data/raw/mnist/MANIFEST.json").read_text())
    assert {entry["verified_by"] for entry in manifest.values()} == {"official md5"} and len(manifest) == 4
    counts = json.loads((repo / "data/split/mnist/counts.json").read_text())
    assert {name: sum(split.values()) for name, split in counts.items()} == {"train": 54000, "val": 6000, "test": 10000}
    evaluated = json.loads((repo / "metrics/mnist/lenet5_modern/seed_42/evaluate.json").read_text())
    assert evaluated["test_images"] == 10000
    assert evaluated["test_accuracy"] >= 0.98, evaluated
