"""Learning-rate schedules (`train.schedule`), per optimizer step.

  constant   the rate throughout (the course notebooks' recipe);
  step       the rate times step_factor every step_epochs epochs;
  cosine     a linear warm-up from 0 over warmup_epochs, then half a cosine down to 0
             (Loshchilov & Hutter 2017, without restarts);
  one_cycle  Smith & Topin 2018, as PyTorch's OneCycleLR: from rate/25 up to the rate over
             the first 30% of steps, then down to rate/25e4, both halves cosine-shaped.

`rate_at` is plain Python, so tests and the per-epoch log read the same numbers the
optimizer uses; `Schedule` is the Keras form of it, saved with the model.
"""

from __future__ import annotations

import math

import keras

from pipeline.training.recipe import TrainSettings

ONE_CYCLE_WARM_FRACTION = 0.3
ONE_CYCLE_START_DIVISOR = 25.0
ONE_CYCLE_END_DIVISOR = 1e4  # of the start rate


def rate_at(step: int, settings: TrainSettings, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step `step` (0-based)."""
    peak, total = settings.learning_rate, settings.epochs * steps_per_epoch
    if settings.schedule == "constant":
        return peak
    if settings.schedule == "step":
        return peak * settings.step_factor ** (step // (settings.step_epochs * steps_per_epoch))
    if settings.schedule == "cosine":
        warmup = settings.warmup_epochs * steps_per_epoch
        if step < warmup:
            return peak * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    if settings.schedule == "one_cycle":
        start = peak / ONE_CYCLE_START_DIVISOR
        end = start / ONE_CYCLE_END_DIVISOR
        rise = max(1, round(ONE_CYCLE_WARM_FRACTION * total))
        if step < rise:
            return _cosine_between(start, peak, step / rise)
        return _cosine_between(peak, end, min(1.0, (step - rise) / max(1, total - 1 - rise)))  # ends on the last step
    raise ValueError(f"train.schedule: unknown schedule {settings.schedule!r}")


def _cosine_between(start: float, end: float, progress: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


@keras.saving.register_keras_serializable(package="pipeline")
class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """`rate_at` for the optimizer: a table of every step's rate, looked up by step.

    A table rather than the formulas in tensor ops keeps one definition of each schedule;
    it costs 4 bytes a step (a 100-epoch GTSRB run has about 25,000 steps).
    """

    def __init__(self, rates: list[float]) -> None:
        self.rates = [float(rate) for rate in rates]

    @classmethod
    def for_settings(cls, settings: TrainSettings, steps_per_epoch: int) -> Schedule:
        return cls([rate_at(step, settings, steps_per_epoch) for step in range(settings.epochs * steps_per_epoch)])

    def __call__(self, step):
        table = keras.ops.convert_to_tensor(self.rates, dtype="float32")
        index = keras.ops.clip(keras.ops.cast(step, "int32"), 0, len(self.rates) - 1)
        return keras.ops.take(table, index)

    def get_config(self) -> dict:
        return {"rates": self.rates}
