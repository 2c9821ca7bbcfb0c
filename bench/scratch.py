"""What the benchmarks share: a scratch git copy of the project, the tools' environment, the machine's load.

Benchmarks run in scratch copies so that they never touch the workspace's outputs, dvc.lock or
MLflow store; a copy gets its data from ../shared/datasets (PIPELINE_DATA_MIRROR).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import edit_params  # noqa: E402

MIRROR = ROOT.parent / "shared" / "datasets"
BIN = Path(sys.executable).parent


def env(**extra: str) -> dict[str, str]:
    """The environment `make` gives the tools: this venv first on PATH, data from the shared mirror."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PIPELINE_DATA_MIRROR": str(MIRROR),
        **extra,
    }


def git_copy(work: Path, params: dict[str, Any] | None = None) -> Path:
    """The project's git-tracked files (without dvc.lock: nothing is built) in a new git repository at
    `work`, params.yaml's dotted keys set to `params`."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in files.split():
        if name == "dvc.lock" or not (ROOT / name).is_file():
            continue
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, work / name)
    set_params(work, params or {})
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-qm", "bench"],
    ):
        subprocess.run(command, cwd=work, check=True, capture_output=True)
    return work


def data_project(dataset: str, params: dict[str, Any], prefix: str) -> Path:
    """A throwaway folder to run stages in (`stage_env`): params.yaml with dotted keys set to `params`,
    the workspace's data/normalized/<dataset> linked in, no git or DVC."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.copy2(ROOT / "params.yaml", work / "params.yaml")
    set_params(work, params)
    (work / "data" / "normalized").mkdir(parents=True)
    (work / "data" / "normalized" / dataset).symlink_to(ROOT / "data" / "normalized" / dataset)
    return work


def stage_env(work: Path, tracked: bool) -> dict[str, str]:
    """`python -m pipeline <stage>` in a `data_project`: this repository's code, tracking in `work` or off."""
    variables = {
        **env(),
        "DVC_ROOT": str(work),
        "PYTHONPATH": str(ROOT),
        "PIPELINE_TRACKING": "on" if tracked else "off",
    }
    variables.pop("MLFLOW_TRACKING_URI", None)
    return variables


def set_params(project: Path, changes: dict[str, Any]) -> None:
    """Set dotted keys (`train.threads`) of a project's params.yaml, as the tests do."""
    edit_params(project / "params.yaml", changes)


def write_result(path: Path, result: dict[str, Any]) -> None:
    """A benchmark's JSON result, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)


def load() -> dict[str, float]:
    """The load averages (1, 5, 15 min): what else ran while a benchmark measured; 2 cores are busy at 2."""
    one, five, fifteen = os.getloadavg()
    return {"1min": one, "5min": five, "15min": fifteen}
