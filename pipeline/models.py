"""Validated designs (pipeline.designs) -> compiled Keras models."""

from __future__ import annotations

import os
from typing import Any

import keras

from pipeline import compute
from pipeline.designs import (Design, Layer, TrainSettings, check_course_rule, check_shapes, declared_layers, layer_key,
                              layer_name)
from pipeline.validate import ConfigError

# Keras layer class -> layer-language type, to check the course rule on the built model.
LAYER_TYPES = {
    "Conv2D": "conv", "MaxPooling2D": "maxpool", "AveragePooling2D": "avgpool",
    "GlobalAveragePooling2D": "globalavgpool", "GlobalMaxPooling2D": "globalmaxpool", "Flatten": "flatten",
    "Dense": "dense", "Dropout": "dropout", "BatchNormalization": "batchnorm", "Activation": "activation",
    # lenet5_classic's own layers count as what they are in the paper
    "PartiallyConnectedConv2D": "conv", "TrainableSubsampling": "avgpool", "EuclideanRBF": "dense",
}


def _activation(name: str) -> Any:
    if name == "scaled_tanh":
        from pipeline.lenet5_classic import scaled_tanh

        return scaled_tanh
    return None if name == "linear" else name


def keras_layer(layer: Layer, num_classes: int, name: str, dtype: str | None = None) -> keras.layers.Layer:
    """The Keras layer of `layer`; `dtype` a policy of its own (None: the policy it is built under)."""
    o = layer.options
    common = {"name": name, "dtype": dtype}
    if layer.type == "conv":
        return keras.layers.Conv2D(o["filters"], o["kernel"], strides=o["strides"], padding=o["padding"],
                                   activation=_activation(o["activation"]), kernel_initializer=o["initializer"],
                                   use_bias=o["use_bias"], **common)
    if layer.type in ("maxpool", "avgpool"):
        cls = keras.layers.MaxPooling2D if layer.type == "maxpool" else keras.layers.AveragePooling2D
        return cls(o["pool"], strides=o["strides"], padding=o["padding"], **common)
    if layer.type == "globalavgpool":
        return keras.layers.GlobalAveragePooling2D(**common)
    if layer.type == "globalmaxpool":
        return keras.layers.GlobalMaxPooling2D(**common)
    if layer.type == "flatten":
        return keras.layers.Flatten(**common)
    if layer.type == "dense":
        units = num_classes if o["units"] == "classes" else o["units"]
        return keras.layers.Dense(units, activation=_activation(o["activation"]), kernel_initializer=o["initializer"],
                                  use_bias=o["use_bias"], **common)
    if layer.type == "dropout":
        return keras.layers.Dropout(o["rate"], **common)
    if layer.type == "batchnorm":
        return keras.layers.BatchNormalization(momentum=o["momentum"], epsilon=o["epsilon"], **common)
    if layer.type == "activation":
        return keras.layers.Activation(_activation(o["activation"]) or "linear", **common)
    raise ValueError(f"no Keras layer for layer type {layer.type!r}")


def build_model(design: Design, input_shape: tuple[int, ...], num_classes: int, seed: int,
                precision: str = "float32") -> keras.Model:
    """The design as an (uncompiled) Keras model; weights initialised from `seed`, layers computing in
    `precision` (train.precision) but the last, whose scores stay float32 (a bfloat16 softmax
    keeps 3 significant digits: too few for the loss and for confidences).

    Checked first as when params load (a student design against the course rule, then the
    shapes), and a student design against the course rule again on the built model.
    """
    if design.student:
        check_course_rule(declared_layers(design), design.name)
    check_shapes(design, input_shape, num_classes)
    # Initializers without their own seed draw from Keras' global generator: seeding it
    # makes the same params + seed give the same initial weights.
    keras.utils.set_random_seed(seed)
    with compute.precision(precision):
        if design.layers is None:
            from pipeline.lenet5_classic import build_lenet5_classic

            try:  # its output layer has a float policy of its own (RBF: float64; softmax: float32)
                model = build_lenet5_classic(tuple(input_shape), num_classes, output=design.classic_output, seed=seed)
            except ValueError as error:
                raise ConfigError(f"models.{design.name}: cannot be built for input {tuple(input_shape)}: "
                                  f"{error}") from None
        else:
            inputs = keras.Input(shape=tuple(input_shape), name="image")
            x = inputs
            for index, layer in enumerate(design.layers):
                last = index == len(design.layers) - 1
                try:
                    x = keras_layer(layer, num_classes, layer_name(index, layer), "float32" if last else None)(x)
                except ValueError as error:  # what check_shapes does not foresee: name the layer, not Keras' own
                    raise ConfigError(f"{layer_key(design, index)}: a {layer.type} layer cannot take an input of "
                                      f"shape {tuple(x.shape[1:])}: {error}") from None
            model = keras.Model(inputs, x, name=design.name)
    if design.student:
        check_course_rule(counted_layers(model), design.name)
    return model


def counted_layers(model: keras.Model) -> list[tuple[str, str]]:
    """(name, layer-language type) of every layer of the built model but its input."""
    return [(layer.name, LAYER_TYPES.get(type(layer).__name__, type(layer).__name__.lower()))
            for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def layer_types(model: keras.Model) -> list[str]:
    return [kind for _, kind in counted_layers(model)]


def make_optimizer(settings: TrainSettings, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The recipe's optimizer: its learning-rate schedule and decoupled weight decay."""
    from pipeline.schedules import Schedule

    rate = (settings.learning_rate if settings.schedule == "constant"
            else Schedule.for_settings(settings, steps_per_epoch))
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
        from pipeline.lenet5_classic import loss_for

        loss = loss_for(design.classic_output)
    if settings.label_smoothing:  # config refuses it for the RBF output
        loss = SmoothedSparseCrossentropy(settings.label_smoothing)
    model.compile(optimizer=make_optimizer(settings, steps_per_epoch), loss=loss, metrics=["accuracy"])
    return model


def load_model(path: str | os.PathLike[str]) -> keras.Model:
    """A model the train stage saved, whichever design (the classic design's own layers included)."""
    import pipeline.lenet5_classic  # noqa: F401  registers the classic design's layers for loading
    import pipeline.schedules  # noqa: F401  and the learning-rate schedule a checkpoint's optimizer holds

    return keras.models.load_model(path)
