"""DVC knows every input: each stage's deps list exactly the pipeline/ modules its command runs.

A stage's command is `python -m pipeline <command>`: the entry (pipeline/__main__.py, pipeline/cli.py)
and the command's module, with everything they import. The imports are read from the modules'
source (every `import pipeline…` and `from pipeline…` statement, at any depth, followed
transitively, each package's __init__.py included), so adding an import without its dep fails
here rather than leaving DVC blind to a change, and a dep on code the stage never runs (which
would re-run it for nothing) fails too. The tracking worker is a process of its own
(`python -m pipeline.tracking.worker`): its code changes what MLflow holds, never a stage's outputs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from pipeline import cli
from tests.conftest import REPO

PACKAGE = "pipeline"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The file of module `name` (dotted) in this repository, or None if it is not one of ours."""
    path = REPO.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def imported_modules(file: Path) -> set[str]:
    """Dotted names of the pipeline modules `file` imports, with every package on the way to them."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from pipeline import files` imports the module pipeline.core.files
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        if name.split(".")[0] != PACKAGE:
            continue
        parts = name.split(".")
        found.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
    return {name for name in found if module_file(name) is not None}


def closure(module: str) -> set[Path]:
    """The files of `module` and of everything it imports from pipeline/, transitively."""
    seen: set[str] = set()
    todo = [module, *(".".join(module.split(".")[:end]) for end in range(1, module.count(".") + 1))]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported for imported in imported_modules(module_file(name)))
    return {module_file(name).relative_to(REPO) for name in seen}


def stage_modules(stage: dict) -> set[Path]:
    """The files a stage's `python -m pipeline <command>` runs: the entry's and the command's closures."""
    command = stage["do"]["cmd"] if "do" in stage else stage["cmd"]
    words = command.split()
    assert words[:3] == ["python", "-m", PACKAGE], command
    return closure(f"{PACKAGE}.__main__") | closure(cli.commands()[words[3]])


def code_deps(stage: dict) -> list[str]:
    deps = stage["do"]["deps"] if "do" in stage else stage["deps"]
    return [dep for dep in deps if dep.startswith(f"{PACKAGE}/")]


def covered(deps: list[str]) -> set[Path]:
    """The .py files the deps name: files as listed, folders with every .py file in them."""
    files: set[Path] = set()
    for dep in deps:
        path = REPO / dep
        files.update(p.relative_to(REPO) for p in path.rglob("*.py")) if path.is_dir() else files.add(Path(dep))
    return files


@pytest.mark.parametrize("name", STAGES)
def test_stage_deps_are_exactly_the_modules_it_runs(name: str) -> None:
    stage = STAGES[name]
    runs = stage_modules(stage)
    listed = covered(code_deps(stage))
    assert not runs - listed, f"{name}: add to its deps in dvc.yaml: {sorted(map(str, runs - listed))}"
    assert not listed - runs, (
        f"{name}: its deps in dvc.yaml name modules it does not run: {sorted(map(str, listed - runs))}"
    )


def test_the_import_reader_sees_lazy_imports_and_packages() -> None:
    """split imports gtsrb_reader inside a function, and every module needs the package's __init__.py."""
    runs = closure("pipeline.stages.split")
    assert {
        Path("pipeline/__init__.py"),
        Path("pipeline/datasets/gtsrb_reader.py"),
        Path("pipeline/datasets/__init__.py"),
        Path("pipeline/stages/split.py"),
    } <= runs
    assert Path("pipeline/designs/keras_build.py") not in runs  # only what split really runs
