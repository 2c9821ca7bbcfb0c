"""A built design compiled for its recipe (optimizer, schedule, weight decay, loss), and loading what was saved."""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np

from pipeline.core import files
from pipeline.designs import Design
from pipeline.training.recipe import TrainSettings


def make_optimizer(settings: TrainSettings, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The recipe's optimizer: its learning-rate schedule and decoupled weight decay."""
    from pipeline.training.schedules import Schedule

    rate = (
        settings.learning_rate if settings.schedule == "constant" else Schedule.for_settings(settings, steps_per_epoch)
    )
    decay = settings.weight_decay or None  # None: Keras' own default (AdamW 0.004, the others none)
    if settings.optimizer == "adam":
        return keras.optimizers.Adam(rate, weight_decay=decay)
    if settings.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=settings.weight_decay)
    if settings.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(rate, momentum=settings.momentum, weight_decay=decay)
    return keras.optimizers.SGD(rate, momentum=settings.momentum, weight_decay=decay)


@keras.saving.register_keras_serializable(package="pipeline")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy on integer labels with label smoothing (Szegedy et al. 2016), which Keras
    offers only for one-hot labels: the stages keep integer labels everywhere."""

    def __init__(self, smoothing: float, name: str = "smoothed_sparse_crossentropy", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.smoothing = smoothing

    def call(self, y_true, y_pred):
        classes = keras.ops.shape(y_pred)[-1]
        one_hot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), classes)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.smoothing)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "smoothing": self.smoothing}


def compile_model(model: keras.Model, design: Design, settings: TrainSettings, steps_per_epoch: int) -> keras.Model:
    loss: Any = "sparse_categorical_crossentropy"
    if design.builtin == "lenet5_classic":
        from pipeline.portable.lenet5_classic import loss_for

        loss = loss_for(design.classic_output)
    if settings.label_smoothing:  # config refuses it for the RBF output
        loss = SmoothedSparseCrossentropy(settings.label_smoothing)
    model.compile(optimizer=make_optimizer(settings, steps_per_epoch), loss=loss, metrics=["accuracy"])
    return model


def loss_and_accuracy(model: keras.Model, labels: np.ndarray, outputs: np.ndarray) -> tuple[float, float]:
    """What `model.evaluate` reports (the compiled loss, and accuracy), from the model's `outputs` on images
    whose classes are `labels`: computed from a prediction, they cost no second pass over the images. No
    regularization term is left out: weight decay is the optimizer's."""
    loss = keras.losses.get(model.loss)(labels, outputs)
    return float(np.mean(keras.ops.convert_to_numpy(loss))), float(np.mean(outputs.argmax(axis=1) == labels))


def load_model(path: str | os.PathLike[str]) -> keras.Model:
    """A model the train stage saved, whichever design (the classic design's own layers included)."""
    import pipeline.portable.lenet5_classic  # noqa: F401  registers the classic design's layers for loading
    import pipeline.training.schedules  # noqa: F401  and the learning-rate schedule a checkpoint's optimizer holds

    files.check_zip(path)  # a damaged file is named in one line, not failed on in Keras
    return keras.models.load_model(path)
