"""Validated designs (pipeline.designs.language) -> Keras models (compiling is the recipe's: training/compile.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras

from pipeline.core.validate import ConfigError
from pipeline.designs.language import (
    Design,
    Layer,
    check_course_rule,
    check_shapes,
    declared_layers,
    layer_key,
    layer_name,
)

# Keras layer class -> layer-language type, to check the course rule on the built model.
LAYER_TYPES = {
    "Conv2D": "conv",
    "MaxPooling2D": "maxpool",
    "AveragePooling2D": "avgpool",
    "GlobalAveragePooling2D": "globalavgpool",
    "GlobalMaxPooling2D": "globalmaxpool",
    "Flatten": "flatten",
    "Dense": "dense",
    "Dropout": "dropout",
    "BatchNormalization": "batchnorm",
    "Activation": "activation",
    # lenet5_classic's own layers count as what they are in the paper
    "PartiallyConnectedConv2D": "conv",
    "TrainableSubsampling": "avgpool",
    "EuclideanRBF": "dense",
}


def _activation(name: str) -> Any:
    if name == "scaled_tanh":
        from pipeline.portable.lenet5_classic import scaled_tanh

        return scaled_tanh
    return None if name == "linear" else name


def keras_layer(layer: Layer, num_classes: int, name: str, dtype: str | None = None) -> keras.layers.Layer:
    """The Keras layer of `layer`; `dtype` a policy of its own (None: the policy it is built under)."""
    o = layer.options
    common = {"name": name, "dtype": dtype}
    if layer.type == "conv":
        return keras.layers.Conv2D(
            o["filters"],
            o["kernel"],
            strides=o["strides"],
            padding=o["padding"],
            activation=_activation(o["activation"]),
            kernel_initializer=o["initializer"],
            use_bias=o["use_bias"],
            **common,
        )
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
        return keras.layers.Dense(
            units,
            activation=_activation(o["activation"]),
            kernel_initializer=o["initializer"],
            use_bias=o["use_bias"],
            **common,
        )
    if layer.type == "dropout":
        return keras.layers.Dropout(o["rate"], **common)
    if layer.type == "batchnorm":
        return keras.layers.BatchNormalization(momentum=o["momentum"], epsilon=o["epsilon"], **common)
    if layer.type == "activation":
        return keras.layers.Activation(_activation(o["activation"]) or "linear", **common)
    raise ValueError(f"no Keras layer for layer type {layer.type!r}")


def build_model(
    design: Design, input_shape: tuple[int, ...], num_classes: int, seed: int, precision: str = "float32"
) -> keras.Model:
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
    with dtype_policy(precision):
        if design.layers is None:
            from pipeline.portable.lenet5_classic import build_lenet5_classic

            try:  # its output layer has a float policy of its own (RBF: float64; softmax: float32)
                model = build_lenet5_classic(tuple(input_shape), num_classes, output=design.classic_output, seed=seed)
            except ValueError as error:
                raise ConfigError(
                    f"models.{design.name}: cannot be built for input {tuple(input_shape)}: {error}"
                ) from None
        else:
            inputs = keras.Input(shape=tuple(input_shape), name="image")
            x = inputs
            for index, layer in enumerate(design.layers):
                last = index == len(design.layers) - 1
                try:
                    x = keras_layer(layer, num_classes, layer_name(index, layer), "float32" if last else None)(x)
                except ValueError as error:  # what check_shapes does not foresee: name the layer, not Keras' own
                    raise ConfigError(
                        f"{layer_key(design, index)}: a {layer.type} layer cannot take an input of "
                        f"shape {tuple(x.shape[1:])}: {error}"
                    ) from None
            model = keras.Model(inputs, x, name=design.name)
    if design.student:
        check_course_rule(counted_layers(model), design.name)
    return model


def counted_layers(model: keras.Model) -> list[tuple[str, str]]:
    """(name, layer-language type) of every layer of the built model but its input."""
    return [
        (layer.name, LAYER_TYPES.get(type(layer).__name__, type(layer).__name__.lower()))
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]


def layer_types(model: keras.Model) -> list[str]:
    return [kind for _, kind in counted_layers(model)]


@contextlib.contextmanager
def dtype_policy(policy: str) -> Iterator[None]:
    """Build layers under Keras' dtype `policy` (float32 or mixed_bfloat16); the previous policy after.

    A built layer keeps its policy, in memory and in the saved model, so only building needs it.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
