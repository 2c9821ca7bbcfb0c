"""Per-epoch checkpoints of a training run, so an interrupted train stage resumes exactly.

DVC deletes a stage's outputs before it runs the stage, so checkpoints live outside them, in
<repo>/.checkpoints/<dataset>/<design>/seed_<n>/ (gitignored and dvcignored; <repo> is the
user's repository even for a queued experiment, see files.project_root). Each holds the
model with its optimizer state (model.keras), the best weights so far (best.npz) and their
outputs on the validation split (best_validation.npz), and state.json: the epochs done, their
history, the MLflow run id and a fingerprint of all that determines the run (params, data,
seed, kernels) and the MD5 of every other file. A checkpoint whose fingerprint differs came
from other params or data and is never resumed. One
that is damaged (state.json unreadable, a file missing or not matching its MD5: a disk error, a
copy cut short) is not resumed either: a warning says so, and training starts from the first
epoch. The train stage removes its checkpoint once its outputs are written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import files

FOLDER = ".checkpoints"
STATE = "state.json"
BEST_OUTPUTS = "best_validation.npz"
log = logging.getLogger(__name__)


def fingerprint(values: dict[str, Any], data_files: list[Path]) -> str:
    """A digest of `values` (JSON-able) and the bytes of `data_files`."""
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode())
    for path in sorted(data_files):
        digest.update(path.name.encode())
        digest.update(files.md5_of(path).encode())
    return digest.hexdigest()[:20]


def random_states(model: Any) -> list[Any]:
    """The state variables of a model's random generators (dropout's masks), in layer order.

    Keras saves weights and optimizer state in model.keras but not these: a loaded model
    draws fresh generator states, so its dropout masks would differ from the interrupted run's.
    """
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    fingerprint: str

    @classmethod
    def of_run(cls, dataset: str, design: str, seed: int, fingerprint: str) -> Checkpoint:
        return cls(files.project_root() / FOLDER / dataset / design / f"seed_{seed}", fingerprint)

    @property
    def model_file(self) -> Path:
        return self.folder / "model.keras"

    def load(self) -> dict[str, Any] | None:
        """The saved state if this run can resume from it, else None (and a stale or damaged one is removed)."""
        if not self.folder.is_dir():
            return None
        try:
            state = json.loads((self.folder / STATE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return self._damaged(f"{STATE} is missing")
        except ValueError as error:  # not JSON (cut short, garbage), or not UTF-8
            return self._damaged(f"{STATE} is unreadable ({error})")
        if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), str):
            return self._damaged(f"{STATE} holds no checkpoint's state")
        if state.get("fingerprint") != self.fingerprint:
            self.discard()  # other params, data or kernels: resuming it would not be this run
            return None
        problem = self._check_files(state.get("files"))
        if problem is not None:
            return self._damaged(problem)
        randoms = files.load_arrays(self.folder / "random.npz")
        state["random_states"] = [randoms[f"s{index}"] for index in range(len(randoms))]
        best = self.folder / "best.npz"
        if best.is_file():
            arrays = files.load_arrays(best)
            state["best_weights"] = [arrays[f"w{index}"] for index in range(len(arrays))]
        if (self.folder / BEST_OUTPUTS).is_file():
            state["best_validation_outputs"] = files.load_arrays(self.folder / BEST_OUTPUTS)["outputs"]
        return state

    def save(
        self,
        model: Any,
        state: dict[str, Any],
        best_weights: list[np.ndarray] | None,
        best_validation_outputs: np.ndarray | None = None,
    ) -> None:
        """Replace the checkpoint whole: a crash while saving leaves the previous epoch's."""
        with files.atomic_directory(self.folder) as tmp:
            with files.writing(tmp / "model.keras"):
                model.save(tmp / "model.keras")
            files.save_arrays(tmp / "random.npz", **{f"s{i}": np.array(v) for i, v in enumerate(random_states(model))})
            if best_weights is not None:
                files.save_arrays(tmp / "best.npz", **{f"w{index}": w for index, w in enumerate(best_weights)})
            if best_validation_outputs is not None:
                files.save_arrays(tmp / BEST_OUTPUTS, outputs=best_validation_outputs)
            digests = {path.name: files.md5_of(path) for path in sorted(tmp.iterdir())}
            files.write_json(tmp / STATE, {**state, "fingerprint": self.fingerprint, "files": digests})

    def _check_files(self, digests: Any) -> str | None:
        """What is wrong with the files state.json lists (`digests`: name -> MD5), or None if they are intact."""
        if not isinstance(digests, dict) or not {"model.keras", "random.npz"} <= set(digests):
            return f"{STATE} lists no MD5 of its files"
        for name, digest in digests.items():
            path = self.folder / name
            if not path.is_file():
                return f"{name} is missing"
            if files.md5_of(path) != digest:
                return f"{name} does not match its MD5"
        return None

    def _damaged(self, problem: str) -> None:
        """Warn that the checkpoint cannot be resumed because of `problem`, and remove it."""
        log.warning(
            "%s: the checkpoint is damaged, %s; it is removed and training starts from epoch 1", self.folder, problem
        )
        self.discard()

    def restore_random_states(self, model: Any, state: dict[str, Any]) -> None:
        """Put back what model.keras does not hold: the dropout layers' random generators."""
        for variable, value in zip(random_states(model), state["random_states"], strict=True):
            variable.assign(value)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        for parent in (self.folder.parent, self.folder.parent.parent):  # tidy now-empty design/dataset folders
            try:
                os.rmdir(parent)
            except OSError:
                break
