"""Where every stage's outputs live: the same paths dvc.yaml declares, in one place.

Paths are relative to the working directory, which DVC sets to the repository (or to a
queued experiment's temporary copy of it) before running a stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RAW = Path("data/raw")
SPLIT = Path("data/split")
NORMALIZED = Path("data/normalized")
CORRUPTED = Path("data/corrupted")  # <dataset>/images.npz and meta.json: the corruption benchmark
REPORTS = Path("reports")
SPLITS = ("train", "val", "test")  # <split>.npz in SPLIT/<dataset> and NORMALIZED/<dataset>
# RunPaths.predictions: index = position in the official test set; label and predicted = class
# indices; confidence = the predicted class's probability.
# int8_predicted: the int8 model's class (pipeline/portable/int8.py), -1 where the design has no int8 model
PREDICTION_COLUMNS = ("index", "label", "predicted", "confidence", "calibrated_confidence", "int8_predicted")


@dataclass(frozen=True)
class RunPaths:
    """The outputs of train and evaluate for one (dataset, design, training seed).

    Every seed has its own folder or file, so that the seeds of a design can train and
    evaluate at the same time without writing to one path.
    """

    dataset: str
    design: str
    seed: int

    @property
    def seed_name(self) -> str:
        return f"seed_{self.seed}"

    @property
    def model_dir(self) -> Path:  # model.keras, summary.txt, architecture.md, run.json, preprocessing.json
        return Path("models") / self.dataset / self.design / self.seed_name

    @property
    def validation_outputs(self) -> Path:  # the model's outputs on the validation split, from training
        return self.model_dir / "validation_outputs.npz"

    @property
    def metrics_dir(self) -> Path:  # train.json and evaluate.json (DVC metrics), per_class.json, predictions.csv
        return Path("metrics") / self.dataset / self.design / self.seed_name

    @property
    def predictions(self) -> Path:  # one row per test image: PREDICTION_COLUMNS
        return self.metrics_dir / "predictions.csv"

    @property
    def robustness(self) -> Path:  # accuracy per corruption and severity (a DVC metric)
        return self.metrics_dir / "robustness.json"

    @property
    def history(self) -> Path:  # per-epoch loss and accuracy; a DVC plot
        return Path("plots/history") / self.dataset / self.design / f"{self.seed_name}.csv"

    @property
    def confusion(self) -> Path:  # one (actual, predicted) row per test image; a DVC confusion plot
        return Path("plots/confusion") / self.dataset / self.design / f"{self.seed_name}.csv"

    @property
    def figures(self) -> Path:  # the PNGs evaluate draws
        return Path("plots/figures") / self.dataset / self.design / self.seed_name


@dataclass(frozen=True)
class SearchPaths:
    """The outputs of a dataset's design search (its study lives in its storage, pipeline/search/study.py).
    Not under reports/, which compare writes whole."""

    dataset: str

    @property
    def report(self) -> Path:  # every trial, the front, the budget spent
        return Path("search") / self.dataset / "report.md"

    @property
    def json(self) -> Path:
        return Path("search") / self.dataset / "report.json"

    @property
    def plots(self) -> Path:  # pareto_<cost>.png, progress.png
        return Path("plots/search") / self.dataset

    @property
    def finalists(self) -> Path:  # designs of the front, in params.yaml's `models:` form (python -m pipeline adopt)
        return Path("search") / self.dataset / "finalists.yaml"
