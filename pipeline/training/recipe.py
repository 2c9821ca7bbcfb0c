"""The recipe: how a design is trained (`train:` in params.yaml, overridable per design and dataset)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.core import validate as v
from pipeline.designs import Design

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "step", "cosine", "one_cycle")
PRECISIONS = ("float32", "mixed_bfloat16")  # pipeline/training/compute.py


@dataclass(frozen=True)
class AugmentSettings:
    """On-the-fly jitter of training batches (pipeline/training/augment.py); all zero means off.

    Geometric ranges are the maxima of a uniform draw per image: rotation and shear in
    degrees, translation as a fraction of the image side, zoom as a fraction of the scale
    (0.1 draws from 0.9x to 1.1x). brightness shifts by up to that fraction of the pixel
    range; contrast scales each image's deviation from its mean by 1 +- contrast. noise adds
    Gaussian pixel noise whose standard deviation, drawn per image, is up to that fraction of
    the pixel range (training against sensor noise). flip mirrors half the images left-right:
    off by default, since a mirrored 3 or "keep right" sign is another class.
    """

    rotation: float = 0.0
    translation: float = 0.0
    zoom: float = 0.0
    shear: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    noise: float = 0.0
    flip: bool = False

    @property
    def enabled(self) -> bool:
        return any(getattr(self, name) for name in AUGMENT_KEYS)


def _fraction(value: Any, where: str) -> float:
    return v.number(value, where, 0.0, 1.0, high_open=True)


AUGMENT_KEYS: dict[str, Callable[[Any, str], Any]] = {
    "rotation": lambda x, w: v.number(x, w, 0.0, 180.0),
    "translation": lambda x, w: v.number(x, w, 0.0, 0.5),
    "zoom": lambda x, w: v.number(x, w, 0.0, 0.9),
    "shear": lambda x, w: v.number(x, w, 0.0, 60.0),
    "brightness": _fraction,
    "contrast": _fraction,
    "noise": _fraction,
    "flip": v.boolean,
}


@dataclass(frozen=True)
class TrainSettings:
    """How a design is trained, its recipe: `train:` in params.yaml, overridable per design."""

    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float  # the peak rate: constant, the start of step and cosine, one-cycle's top
    momentum: float
    early_stopping_patience: int  # 0 = train every epoch
    schedule: str  # constant | step | cosine | one_cycle (pipeline/training/schedules.py)
    warmup_epochs: int  # cosine: linear warm-up from 0 over this many epochs
    step_epochs: int  # step: multiply the rate by step_factor every step_epochs epochs
    step_factor: float
    weight_decay: float  # decoupled weight decay (as AdamW), for every optimizer
    label_smoothing: float  # softmax outputs only
    restore_best: bool  # end with the weights of the epoch with the best validation accuracy
    augment: AugmentSettings
    threads: int | str  # TensorFlow's threads, or `auto` (pipeline/training/compute.py): they change float results
    precision: str  # float32 | mixed_bfloat16 (pipeline/training/compute.py)

    def merged(self, overrides: dict[str, Any]) -> TrainSettings:
        """These settings with some keys overridden (a partial train block); `augment` merges key by key."""
        values = {**self.__dict__, **overrides}
        if "augment" in overrides:
            values["augment"] = AugmentSettings(**{**self.augment.__dict__, **overrides["augment"]})
        return TrainSettings(**values)

    def as_params(self) -> dict[str, Any]:
        """Plain values, as logged to MLflow and fingerprinted for checkpoints."""
        return {**self.__dict__, "augment": dict(self.augment.__dict__)}

    def describe(self) -> str:
        """The recipe in one line, for reports: what differs from a bare constant-rate run is named."""
        schedule = self.schedule
        if self.schedule == "cosine" and self.warmup_epochs:
            schedule += f" (warm-up {self.warmup_epochs})"
        elif self.schedule == "step":
            schedule += f" (x{self.step_factor:g} every {self.step_epochs})"
        parts = [
            f"{self.epochs} epochs",
            f"batch {self.batch_size}",
            f"{self.optimizer} {self.learning_rate:g}",
            schedule,
        ]
        if self.weight_decay:
            parts.append(f"weight decay {self.weight_decay:g}")
        if self.label_smoothing:
            parts.append(f"label smoothing {self.label_smoothing:g}")
        if self.augment.enabled:
            a = self.augment
            jitter = [
                f"{name} {value:g}{unit}"
                for name, value, unit in (
                    ("rotation", a.rotation, "°"),
                    ("translation", a.translation, ""),
                    ("zoom", a.zoom, ""),
                    ("shear", a.shear, "°"),
                    ("brightness", a.brightness, ""),
                    ("contrast", a.contrast, ""),
                    ("noise", a.noise, ""),
                )
                if value
            ]
            parts.append(f"jitter ({', '.join(jitter + (['flip'] if a.flip else []))})")
        if self.early_stopping_patience:
            parts.append(f"early stopping {self.early_stopping_patience}")
        if self.restore_best:
            parts.append("best validation epoch kept")
        if self.precision != "float32":
            parts.append(self.precision)
        return ", ".join(parts)


def _threads(value: Any, where: str) -> int | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1024):
        return value
    raise v.fail(where, "must be a positive int (TensorFlow's threads) or auto (cores / trainings side by side)", value)


TRAIN_KEYS: dict[str, Callable[[Any, str], Any]] = {
    "epochs": lambda x, w: v.integer(x, w, 1),
    "batch_size": lambda x, w: v.integer(x, w, 1),
    "optimizer": lambda x, w: v.choice(x, w, OPTIMIZERS),
    "learning_rate": lambda x, w: v.number(x, w, 0.0, 10.0, low_open=True),
    "momentum": lambda x, w: v.number(x, w, 0.0, 1.0, high_open=True),
    "early_stopping_patience": lambda x, w: v.integer(x, w, 0),
    "schedule": lambda x, w: v.choice(x, w, SCHEDULES),
    "warmup_epochs": lambda x, w: v.integer(x, w, 0),
    "step_epochs": lambda x, w: v.integer(x, w, 1),
    "step_factor": lambda x, w: v.number(x, w, 0.0, 1.0, low_open=True),
    "weight_decay": lambda x, w: v.number(x, w, 0.0, 1.0, high_open=True),
    "label_smoothing": _fraction,
    "restore_best": v.boolean,
    "augment": lambda x, w: x,  # a mapping of its own: parse_train checks it key by key
    "threads": _threads,
    "precision": lambda x, w: v.choice(x, w, PRECISIONS),
}


def parse_train(value: Any, where: str, partial: bool = False) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Parse a `train:` block; `partial` allows a subset (a design's overrides).

    Returns (settings, per_dataset): `per_dataset.<dataset>` holds that dataset's own values of any
    train key (a partial block each); config checks that the datasets exist.
    """
    optional = (*TRAIN_KEYS, PER_DATASET) if partial else (PER_DATASET,)
    block = v.keys(value, where, required=() if partial else TRAIN_KEYS, optional=optional)
    per_dataset = {
        dataset: _parse_train_keys(overrides, v.join(v.join(where, PER_DATASET), dataset), partial=True)
        for dataset, overrides in v.mapping(block.get(PER_DATASET) or {}, v.join(where, PER_DATASET)).items()
    }
    return _parse_train_keys({k: x for k, x in block.items() if k != PER_DATASET}, where, partial), per_dataset


PER_DATASET = "per_dataset"


def _parse_train_keys(value: Any, where: str, partial: bool) -> dict[str, Any]:
    block = v.keys(value, where, required=() if partial else TRAIN_KEYS, optional=TRAIN_KEYS if partial else ())
    parsed = {key: TRAIN_KEYS[key](block[key], v.join(where, key)) for key in block}
    if "augment" in block:
        augment_where = v.join(where, "augment")
        jitter = v.keys(
            block["augment"],
            augment_where,
            required=() if partial else AUGMENT_KEYS,
            optional=AUGMENT_KEYS if partial else (),
        )
        augment = {key: AUGMENT_KEYS[key](jitter[key], v.join(augment_where, key)) for key in jitter}
        parsed["augment"] = augment if partial else AugmentSettings(**augment)
    return parsed


def merged_recipe(
    shared: TrainSettings, shared_per_dataset: dict[str, dict[str, Any]], design: Design, dataset: str
) -> TrainSettings:
    """A design's recipe on a dataset: the shared block, its per_dataset values, the design's own
    block, then the design's per_dataset values; the more specific wins."""
    return (
        shared.merged(shared_per_dataset.get(dataset, {}))
        .merged(design.train_overrides)
        .merged(design.train_per_dataset.get(dataset, {}))
    )


def check_recipe(design: Design, settings: TrainSettings, dataset: str) -> None:
    """What no single key can check: a design's merged recipe (on `dataset`) must make sense as a whole."""
    where = "train"
    if design.train_overrides:
        where = f"models.{design.name}.train"
    if dataset in design.train_per_dataset:
        where = f"models.{design.name}.train.{PER_DATASET}.{dataset}"
    if settings.schedule == "cosine" and settings.warmup_epochs >= settings.epochs:
        raise v.ConfigError(
            f"{where}: warmup_epochs ({settings.warmup_epochs}) must be fewer than epochs "
            f"({settings.epochs}) for the cosine schedule; lower {where}.warmup_epochs"
        )
    if settings.label_smoothing and design.builtin == "lenet5_classic" and design.classic_output == "rbf":
        raise v.ConfigError(
            f"models.{design.name}: label_smoothing applies to softmax outputs, and this design's "
            f"output is rbf; set its train: {{label_smoothing: 0}} or output: softmax"
        )
