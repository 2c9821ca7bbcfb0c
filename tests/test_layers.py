"""The layers are enforced: pyproject.toml's import-linter contracts pass on the tree, and fail on an
upward import, an import between stages, a project import in portable/ or an import cycle (what `make lint`
runs in CI)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(root)}
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("core/paths.py", "from pipeline.tracking import store", "Layers: each imports only from the layers below it"),
        ("stages/split.py", "from pipeline.stages import download", "Stages never import each other"),
        ("portable/preprocess.py", "from pipeline.core import files", "portable imports nothing else from the project"),
        (
            "core/paths.py",
            "from pipeline.core import files",
            "No import cycles, between packages or between the modules of one",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(copy: Path, module: str, line: str, broken: str) -> None:
    path = copy / "pipeline" / module
    path.write_text(path.read_text() + f"\n{line}  # the violation\n")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert f"{broken} BROKEN" in result.stdout, result.stdout
