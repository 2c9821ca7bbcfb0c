"""Shared fixtures: tiny datasets in the official formats, and a throwaway copy of the project."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import settings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
# What a copy of the project needs to run `dvc repro` (everything git tracks that the stages use).
PROJECT_FILES = (
    "pipeline",
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    ".gitignore",
    "data/README.md",
    "mlruns/README.md",
)

# Hypothesis profiles of the property tests (tests/test_properties_*.py). `ci`, the default: the same
# few hundred examples per property on every run (derandomized, no example database), so a failure
# is reproducible and the files stay around a minute. `long`: bench/bench_fuzz.py's run, many more
# examples from a seed it records. The deadline is far above what an example takes: it flags slowness
# (a quadratic loop, a regex backtracking), not a loaded machine.
settings.register_profile(
    "ci", max_examples=250, derandomize=True, deadline=timedelta(seconds=2), database=None, print_blob=True
)
settings.register_profile("long", max_examples=10_000, deadline=timedelta(seconds=2), database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def idx_bytes(array: np.ndarray) -> bytes:
    """`array` (uint8) in the IDX format MNIST ships in: magic, big-endian dims, raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def learnable_digits(count: int, seed: int, size: int = 28, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images a small CNN learns in one epoch: class k is a bright bar at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(count, size, size), dtype=np.uint8)
    for index, label in enumerate(labels):
        row = 3 + (label % 5) * 5
        col = 4 if label < 5 else 16
        images[index, row : row + 3, col : col + 8] = 255
    return images, labels.astype(np.uint8)


def write_idx_dataset(folder: Path, train: int = 300, test: int = 100, seed: int = 0) -> dict[str, str]:
    """The four MNIST-layout .gz files of a tiny learnable dataset; returns name -> md5."""
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = learnable_digits(train, seed)
    test_x, test_y = learnable_digits(test, seed + 1)
    payloads = {
        "train-images-idx3-ubyte.gz": train_x,
        "train-labels-idx1-ubyte.gz": train_y,
        "t10k-images-idx3-ubyte.gz": test_x,
        "t10k-labels-idx1-ubyte.gz": test_y,
    }
    md5s = {}
    for name, array in payloads.items():
        data = gzip.compress(idx_bytes(array), mtime=0)
        (folder / name).write_bytes(data)
        md5s[name] = hashlib.md5(data).hexdigest()
    return md5s


def write_mirror(mirror: Path) -> Path:
    """A mirror folder (one subfolder per dataset) holding a tiny repackaged MNIST and its MD5SUMS."""
    md5s = write_idx_dataset(mirror / "mnist", train=400, test=100)
    (mirror / "MD5SUMS").write_text("".join(f"{md5}  mnist/{name}\n" for name, md5 in md5s.items()))
    return mirror


# The tiny project's designs: LeNet-5 modern and a student design, so comparisons have two rows.
TINY_PROJECT_MODELS = ("lenet5_modern", "student_b")


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project after `dvc repro` on tiny MNIST-format data, 1 epoch, two designs.

    Shared by the end-to-end and MLflow UI tests (it costs about a minute); tests that change
    it (experiments) must keep the workspace runs intact.
    """
    base = tmp_path_factory.mktemp("tiny-project")
    repo = copy_project(base / "repo", tiny_params(write_mirror(base / "mirror")))
    run(["dvc", "repro"], repo)
    return repo


def tiny_params(mirror: Path) -> dict[str, object]:
    """The params changes of a tiny project: MNIST from `mirror` (write_mirror), two designs, 1 epoch."""
    return {
        "download.mirror": str(mirror),
        "train.epochs": 1,
        "train.batch_size": 32,
        "experiments.datasets": ["mnist"],
        "experiments.models": list(TINY_PROJECT_MODELS),
        "evaluate.sample_images": 8,
        "robustness.images": 20,
    }


def copy_project(target: Path, params_changes: dict[str, object]) -> Path:
    """A git repository at `target` holding the project's files, with params.yaml edited.

    The shipped designs' per-dataset recipes (student_b's 15 MNIST epochs, LeNet-5 modern's 60 on
    GTSRB) are dropped, so the shared `train` keys a test sets are what every design trains by.
    """
    target.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    drop_design_recipes(target / "params.yaml")
    edit_params(target / "params.yaml", params_changes)
    run(["git", "init", "-q", "-b", "main"], target)
    run(["git", "config", "user.email", "tests@example.invalid"], target)
    run(["git", "config", "user.name", "tests"], target)
    run(["dvc", "init", "-q"], target)
    run(["dvc", "config", "core.analytics", "false"], target)
    run(["git", "add", "-A"], target)
    run(["git", "commit", "-qm", "fixture project"], target)
    return target


def drop_design_recipes(path: Path) -> None:
    """Remove `models.<design>.train.per_dataset` from the params file at `path`."""
    params = yaml.safe_load(path.read_text())
    for design in params["models"].values():
        (design.get("train") or {}).pop("per_dataset", None)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def edit_params(path: Path, changes: dict[str, object]) -> None:
    """Set dotted keys (`train.epochs`) of the params file at `path`."""
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def tool_env(**extra: str) -> dict[str, str]:
    """The environment stages run in: this venv first on PATH, no inherited tracking overrides."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_", "PIPELINE_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(command: list[str], cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, cwd=cwd, env=tool_env(**extra_env), capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
