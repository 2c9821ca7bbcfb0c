"""`make` picks the Python the lock was made for, and says what to install when there is none."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def fake_python(folder: Path, name: str, version: str) -> Path:
    """A stand-in interpreter: prints `version` for --version and fails every -c check unless it is 3.11."""
    folder.mkdir(exist_ok=True)
    script = folder / name
    ok = "0" if version.startswith("Python 3.11.") else "1"
    script.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "{version}" && exit 0\nexit {ok}\n')
    script.chmod(0o755)
    return script


def make(cwd: Path, *args: str, path: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path}
    env.pop("PYTHON", None)
    return subprocess.run([shutil.which("make"), "-s", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("Makefile", "requirements.lock", "requirements-gpu.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def test_python311_is_used_where_present(project: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake_python(bin_dir, "python3", "Python 3.12.1")
    preferred = fake_python(bin_dir, "python3.11", "Python 3.11.9")
    shown = make(project, "--eval", "show: ; @echo $(PYTHON)", "show", path=f"{bin_dir}:/usr/bin:/bin")
    assert shown.stdout.strip() == str(preferred)
    (bin_dir / "python3.11").unlink()
    shown = make(project, "--eval", "show: ; @echo $(PYTHON)", "show", path=f"{bin_dir}:/usr/bin:/bin")
    assert shown.stdout.strip() in ("python3", "/usr/bin/python3.11")  # the system's own 3.11 still wins


def test_an_unsupported_python_says_what_to_install(project: Path, tmp_path: Path) -> None:
    fake_python(tmp_path / "bin", "python3", "Python 3.12.1")
    result = make(project, "setup", "PYTHON=python3", path=f"{tmp_path / 'bin'}:/bin")
    assert result.returncode != 0 and not (project / ".venv").exists()
    assert (
        "make: the locked dependencies need Python 3.11; 'python3' is Python 3.12.1. Install it (Debian/Ubuntu: "
        "sudo apt-get install -y python3.11 python3.11-venv) or point make at one: "
        "make PYTHON=/path/to/python3.11"
    ) in result.stderr
    result = make(project, "setup", "PYTHON=/no/such/python3.11", path="/usr/bin:/bin")
    assert "'/no/such/python3.11' is not installed. Install it" in result.stderr


def show(project: Path, *args: str) -> str:
    return make(
        project, *args, "--eval", "show: ; @echo $(LOCK) $(INSTALLED)", "show", path="/usr/bin:/bin"
    ).stdout.strip()


def test_gpu_1_installs_the_gpu_lock_and_the_choice_sticks_until_gpu_0(project: Path) -> None:
    assert show(project) == "requirements.lock .venv/.installed-cpu"
    assert show(project, "GPU=1") == "requirements-gpu.lock .venv/.installed-gpu"
    (project / ".venv").mkdir()
    (project / ".venv" / ".installed-gpu").touch()  # what `make setup GPU=1` leaves
    assert show(project) == "requirements-gpu.lock .venv/.installed-gpu"
    assert show(project, "GPU=0") == "requirements.lock .venv/.installed-cpu"


def pins(lock: Path) -> dict[str, str]:
    def key(name: str) -> str:
        return name.replace("_", "-").replace(".", "-").lower()

    return {
        key(name): version
        for name, version in (line.strip().split("==") for line in lock.read_text().splitlines() if "==" in line)
    }


def test_the_gpu_lock_is_the_cpu_lock_with_tensorflows_cuda_wheels() -> None:
    """Re-pinning one lock without the other (`make lock`, then `make lock-gpu`) fails here."""
    cpu, gpu = pins(REPO / "requirements.lock"), pins(REPO / "requirements-gpu.lock")
    assert gpu.pop("tensorflow") == cpu.pop("tensorflow-cpu")
    added = {name for name in gpu if name not in cpu}
    assert added and all(name.startswith("nvidia-") and name.endswith("-cu12") for name in added), added
    assert {name: gpu[name] for name in cpu} == cpu
