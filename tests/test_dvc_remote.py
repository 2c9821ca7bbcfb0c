"""A DVC remote: after `dvc push`, a fresh clone's `dvc pull` restores data, models, figures and metrics,
and `dvc repro` then has nothing to do. Metrics, histories, confusion CSVs and reports are `cache: false`
outputs that git carries; data, models and figures are in the DVC cache, which the remote carries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.core.paths import RunPaths
from tests.conftest import TINY_PROJECT_MODELS, run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SEED = 42


def test_a_fresh_clone_pulls_everything_and_has_nothing_to_reproduce(tiny_project: Path, tmp_path: Path) -> None:
    machine = tmp_path / "machine-a"
    shutil.copytree(tiny_project, machine, symlinks=True)  # the project after `dvc repro`, kept apart from its tests
    run(["dvc", "remote", "add", "-d", "nas", str(tmp_path / "nas")], machine)  # a local or NAS folder
    run(["git", "add", "-A"], machine)
    run(["git", "commit", "-qm", "outputs and dvc.lock"], machine)
    assert run(["git", "status", "--porcelain"], machine).stdout == "", "an output is neither in git nor ignored"
    tracked = set(run(["git", "ls-files"], machine).stdout.splitlines())
    out = RunPaths("mnist", TINY_PROJECT_MODELS[0], SEED)
    in_git = [
        out.metrics_dir / "evaluate.json",
        out.metrics_dir / "train.json",
        out.predictions,
        out.history,
        out.confusion,
        Path("reports/compare.md"),
        Path("reports/compare.json"),
        Path("dvc.lock"),
    ]
    in_dvc = [
        out.model_dir / "model.keras",
        out.figures / "confusion.png",
        Path("data/normalized/mnist/train.npz"),
        Path("data/raw/mnist/MANIFEST.json"),
    ]
    assert {str(path) for path in in_git} <= tracked
    assert not {str(path) for path in in_dvc} & tracked
    run(["dvc", "push", "--run-cache"], machine)

    other = tmp_path / "machine-b"
    run(["git", "clone", "-q", str(machine), str(other)], tmp_path)
    run(["dvc", "pull"], other)
    for path in in_git + in_dvc:
        assert (other / path).read_bytes() == (machine / path).read_bytes(), path
    assert "Data and pipelines are up to date" in run(["dvc", "status"], other).stdout
    assert "Running stage" not in run(["dvc", "repro"], other).stdout
