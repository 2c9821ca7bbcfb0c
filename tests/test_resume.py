"""An interrupted train stage resumes at the next epoch and ends exactly as an uninterrupted one."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import copy_project, run, tool_env, write_idx_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

DESIGN = "student_b"  # batch normalization and dropout: state beyond the weights must resume too
EPOCHS = 4
CHECKPOINT = Path(".checkpoints/mnist") / DESIGN / "seed_42"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("resume")
    md5s = write_idx_dataset(base / "mirror" / "mnist", train=3000, test=100)  # epochs long enough to interrupt
    (base / "mirror" / "MD5SUMS").write_text("".join(f"{md5}  mnist/{name}\n" for name, md5 in md5s.items()))
    repo = copy_project(
        base / "repo",
        {
            "download.mirror": str(base / "mirror"),
            "train.epochs": EPOCHS,
            "train.batch_size": 8,
            "train.schedule": "cosine",
            "train.warmup_epochs": 1,
            "train.restore_best": True,  # the best epoch's weights and validation outputs resume too
            "train.augment.rotation": 10,
            "train.augment.translation": 0.1,
            "experiments.datasets": ["mnist"],
            "experiments.models": [DESIGN],
        },
    )
    run(["dvc", "repro", "normalize@mnist"], repo)
    return repo


def train_command() -> list[str]:
    return [sys.executable, "-m", "pipeline", "train", "mnist", DESIGN]


def interrupt_after_epoch_line(repo: Path, epoch: int) -> str:
    """Start the train stage, SIGTERM it once it logged `epoch <epoch>/N`; returns its log."""
    process = subprocess.Popen(train_command(), cwd=repo, env=tool_env(), stderr=subprocess.PIPE, text=True)
    log = []
    for line in process.stderr:
        log.append(line)
        if f"epoch {epoch}/{EPOCHS} " in line:
            process.send_signal(signal.SIGTERM)
            break
    log.extend(process.stderr)
    assert process.wait(timeout=120) != 0, "the stage finished before it could be interrupted"
    return "".join(log)


def weights_digest(model_file: Path) -> str:
    from pipeline.training.compile import load_model

    digest = hashlib.sha256()
    for weights in load_model(model_file).get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()


def saved_validation_outputs(repo: Path) -> np.ndarray:
    """What train saved for evaluate's temperature: its last validation pass's outputs, of the weights it kept."""
    from pipeline.core import files

    return files.load_arrays(repo / f"models/mnist/{DESIGN}/seed_42/validation_outputs.npz")["outputs"]


def history_without_timings(repo: Path) -> list[dict[str, str]]:
    with open(repo / f"plots/history/mnist/{DESIGN}/seed_42.csv", encoding="utf-8") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def epoch_lines(log: str) -> list[str]:
    return re.findall(r": epoch (\d+/\d+) ", log)


def test_interrupted_training_resumes_and_matches_an_uninterrupted_run(project: Path) -> None:
    log = interrupt_after_epoch_line(project, 2)
    state = json.loads((project / CHECKPOINT / "state.json").read_text())
    done = state["epochs_done"]
    assert done >= 2 and epoch_lines(log)[:done] == [f"{e}/{EPOCHS}" for e in range(1, done + 1)]

    resumed = run(["dvc", "repro", f"train@mnist-{DESIGN}-42"], project)
    resumed_log = resumed.stdout + resumed.stderr
    assert f"resuming {DESIGN} on mnist after epoch {done} of {EPOCHS}" in resumed_log
    assert epoch_lines(resumed_log)[0] == f"{done + 1}/{EPOCHS}", "the first epoch after the interruption"
    assert not (project / CHECKPOINT).exists(), "a finished run leaves no checkpoint"
    run_json = json.loads((project / f"models/mnist/{DESIGN}/seed_42/run.json").read_text())
    assert run_json["run_id"] == state["run_id"], "the MLflow run continues under the same id"
    resumed_weights = weights_digest(project / f"models/mnist/{DESIGN}/seed_42/model.keras")
    resumed_history = history_without_timings(project)
    resumed_outputs = saved_validation_outputs(project)
    assert [row["epoch"] for row in resumed_history] == [str(e) for e in range(1, EPOCHS + 1)]

    uninterrupted = subprocess.run(train_command(), cwd=project, env=tool_env(), capture_output=True, text=True)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert "resuming" not in uninterrupted.stderr
    assert history_without_timings(project) == resumed_history
    assert weights_digest(project / f"models/mnist/{DESIGN}/seed_42/model.keras") == resumed_weights
    np.testing.assert_array_equal(saved_validation_outputs(project), resumed_outputs)
    # they are the saved model's outputs: the temperature evaluate fits on them is the model's
    from pipeline.core import files
    from pipeline.training.compile import load_model

    x_val = files.load_arrays(project / "data/normalized/mnist/val.npz")["x"]
    predicted = load_model(project / f"models/mnist/{DESIGN}/seed_42/model.keras").predict(x_val, verbose=0)
    np.testing.assert_allclose(resumed_outputs, predicted, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_of_other_params_is_never_resumed(project: Path) -> None:
    interrupt_after_epoch_line(project, 1)
    assert (project / CHECKPOINT / "state.json").is_file()
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("learning_rate: 0.001", "learning_rate: 0.002"))
    rerun = subprocess.run(train_command(), cwd=project, env=tool_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" not in rerun.stderr and epoch_lines(rerun.stderr)[0] == f"1/{EPOCHS}"
