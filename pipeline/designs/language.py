"""The layer language: CNN designs written as data, and the built-in designs written in it.

A design in params.yaml is either `{builtin: NAME}` or `{layers: [...]}`; each layer is a
mapping with a `type` and that type's options. This module only parses and validates
(no TensorFlow import, so a bad params.yaml fails in milliseconds): the options, the course
rule, and the shapes a dataset's images take through the layers (`check_shapes`, Keras'
arithmetic without Keras); `pipeline.designs.keras_build` turns a validated design into a Keras model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.core import validate as v
from pipeline.designs.builtins import BUILTINS

ACTIVATIONS = (
    "linear",
    "relu",
    "tanh",
    "sigmoid",
    "softmax",
    "elu",
    "selu",
    "gelu",
    "swish",
    "leaky_relu",
    "scaled_tanh",
)
INITIALIZERS = (
    "glorot_uniform",
    "glorot_normal",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "lecun_uniform",
    "random_normal",
    "random_uniform",
    "orthogonal",
)
PADDINGS = ("valid", "same")
CLASSIC_OUTPUTS = ("rbf", "softmax")
DESIGN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def _units(value: Any, where: str) -> int | str:
    """Dense width: a positive int, or `classes` for the dataset's class count."""
    if value == "classes":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise v.fail(where, "must be a positive int or the word classes", value)
    return value


def _rate(value: Any, where: str) -> float:
    return v.number(value, where, 0.0, 1.0, high_open=True)


def _activation(value: Any, where: str) -> str:
    return v.choice(value, where, ACTIVATIONS)


def _initializer(value: Any, where: str) -> str:
    return v.choice(value, where, INITIALIZERS)


def _padding(value: Any, where: str) -> str:
    return v.choice(value, where, PADDINGS)


def _positive_number(value: Any, where: str) -> float:
    return v.number(value, where, 0.0, float("inf"), low_open=True)


REQUIRED = object()  # marks an option without a default

# type -> option -> (checker, default). Defaults follow Keras, so a design reads like Keras code;
# they are written in the checked form (pairs as tuples) so a layer's options have one type.
LAYER_OPTIONS: dict[str, dict[str, tuple[Callable[[Any, str], Any], Any]]] = {
    "conv": {
        "filters": (lambda x, w: v.integer(x, w, 1), REQUIRED),
        "kernel": (v.pair, REQUIRED),
        "strides": (v.pair, (1, 1)),
        "padding": (_padding, "valid"),
        "activation": (_activation, "linear"),
        "initializer": (_initializer, "glorot_uniform"),
        "use_bias": (v.boolean, True),
    },
    # strides None: the pool size, as in Keras
    "maxpool": {"pool": (v.pair, (2, 2)), "strides": (v.pair, None), "padding": (_padding, "valid")},
    "avgpool": {"pool": (v.pair, (2, 2)), "strides": (v.pair, None), "padding": (_padding, "valid")},
    "globalavgpool": {},
    "globalmaxpool": {},
    "flatten": {},
    "dense": {
        "units": (_units, REQUIRED),
        "activation": (_activation, "linear"),
        "initializer": (_initializer, "glorot_uniform"),
        "use_bias": (v.boolean, True),
    },
    "dropout": {"rate": (_rate, REQUIRED)},
    "batchnorm": {"momentum": (_rate, 0.99), "epsilon": (_positive_number, 1e-3)},
    "activation": {"activation": (_activation, REQUIRED)},
}
CONVOLUTIONS = ("conv",)
POOLINGS = ("maxpool", "avgpool", "globalavgpool", "globalmaxpool")
DENSES = ("dense",)


@dataclass(frozen=True)
class Layer:
    type: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Design:
    """One CNN design: a built-in name or a list of layers, with its own training overrides."""

    name: str
    layers: tuple[Layer, ...] | None  # None for builtins not expressible as layers (lenet5_classic)
    builtin: str | None = None
    student: bool = False
    classic_output: str = "rbf"
    train_overrides: dict[str, Any] = field(default_factory=dict)
    train_per_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)  # train.per_dataset.<dataset>


def parse_layer(value: Any, where: str) -> Layer:
    block = v.mapping(value, where)
    kind = v.choice(block.get("type"), v.join(where, "type"), LAYER_OPTIONS)
    schema = LAYER_OPTIONS[kind]
    v.keys(
        block,
        where,
        required=["type"] + [k for k, (_, d) in schema.items() if d is REQUIRED],
        optional=[k for k, (_, d) in schema.items() if d is not REQUIRED],
    )
    options = {}
    for key, (check, default) in schema.items():
        options[key] = check(block[key], v.join(where, key)) if key in block else default
    return Layer(kind, options)


def parse_layers(value: Any, where: str) -> tuple[Layer, ...]:
    if not isinstance(value, list) or not value:
        raise v.fail(where, "must be a non-empty list of layers", value)
    return tuple(parse_layer(item, v.join(where, index)) for index, item in enumerate(value))


def parse_design(name: str, value: Any, where: str) -> Design:
    if not isinstance(name, str) or not DESIGN_NAME.fullmatch(name):
        raise v.ConfigError(
            f"{where}: {v.shown(name)} cannot name a design, which names a folder (models/<dataset>/<design>/), "
            f"a params key (models.<design>) and a word of a command; rename it with letters, digits, _ and - "
            f"(not first)"
        )
    block = v.keys(value, where, optional=("builtin", "layers", "student", "output", "train"))
    if ("builtin" in block) == ("layers" in block):
        raise v.fail(
            where, "must have exactly one of builtin (a built-in design's name) or layers (a list)", dict(block)
        )
    if "builtin" in block:
        builtin = v.choice(block["builtin"], v.join(where, "builtin"), BUILTINS)
        output = "rbf"
        if "output" in block:
            if builtin != "lenet5_classic":
                raise v.ConfigError(f"{v.join(where, 'output')}: only lenet5_classic has an output option")
            output = v.choice(block["output"], v.join(where, "output"), CLASSIC_OUTPUTS)
        student = v.boolean(block.get("student", False), v.join(where, "student"))
        layers = None if builtin == "lenet5_classic" else parse_layers(BUILTINS[builtin], f"builtin {builtin}")
        return Design(name, layers, builtin, student, output)
    if "output" in block:
        raise v.ConfigError(f"{v.join(where, 'output')}: only lenet5_classic has an output option")
    student = v.boolean(block.get("student", True), v.join(where, "student"))
    return Design(name, parse_layers(block["layers"], v.join(where, "layers")), None, student)


def layer_name(index: int, layer: Layer) -> str:
    """The built layer's name: its index in params (layers.0 -> 00_conv), so reports and errors line up."""
    return f"{index:02d}_{layer.type}"


def layer_key(design: Design, index: int) -> str:
    """Where layer `index` of `design` is written, for error messages."""
    if design.builtin is None:
        return f"models.{design.name}.layers.{index}"
    return f"models.{design.name} (builtin {design.builtin}), layer {index}"


# lenet5_classic's layers as pipeline/portable/lenet5_classic.py builds them, typed as the course rule counts them
CLASSIC_LAYERS = (
    ("c1", "conv"),
    ("s2", "avgpool"),
    ("c3", "conv"),
    ("s4", "avgpool"),
    ("c5", "conv"),
    ("flatten", "flatten"),
    ("f6", "dense"),
    ("output", "dense"),
)


def declared_layers(design: Design) -> list[tuple[str, str]]:
    """(name, type) of the layers `pipeline.designs.keras_build` builds for `design`, input excluded."""
    if design.layers is None:
        return list(CLASSIC_LAYERS)
    return [(layer_name(index, layer), layer.type) for index, layer in enumerate(design.layers)]


def check_course_rule(layers: list[tuple[str, str]], design: str) -> None:
    """The course's rule for a student design: < 15 layers, >= 1 conv, >= 1 pooling, >= 1 dense.

    `layers` are (name, layer-language type) of the built model's layers, input excluded,
    so the rule is checked on what was built, not on what was written.
    """
    types = [kind for _, kind in layers]
    problems = []
    if len(types) >= 15:
        problems.append(f"has {len(types)} layers, the rule allows at most 14")
    for needed, name in ((CONVOLUTIONS, "convolution"), (POOLINGS, "pooling"), (DENSES, "dense")):
        if not any(t in needed for t in types):
            problems.append(f"has no {name} layer")
    if problems:
        counted = ", ".join(f"{name} ({kind})" for name, kind in layers)
        raise v.ConfigError(
            f"models.{design}: breaks the course rule for student designs (fewer than 15 layers, at least one "
            f"convolution, one pooling and one dense layer): it {'; '.join(problems)}. "
            f"Layers counted ({len(types)}): {counted}"
        )


def check_shapes(design: Design, input_shape: tuple[int, ...], num_classes: int, dataset: str | None = None) -> None:
    """Follow images of `input_shape` through the design as Keras would, without building it.

    Refuses, naming the layer, a window (kernel or pool) larger than what is left of the image,
    an image layer after the image was flattened, and a design whose output is not one value
    per class. `dataset` only names the images in the messages.
    """
    images = f"{dataset}'s {_size(input_shape)} images" if dataset else f"{_size(input_shape)} images"
    if design.layers is None:
        _check_classic_input(design, input_shape, images)
        return
    shape = tuple(input_shape)
    for index, layer in enumerate(design.layers):
        shape = _output_shape(layer, shape, num_classes, f"{layer_key(design, index)} ({layer.type})", images)
    if len(shape) != 1:
        raise v.ConfigError(
            f"models.{design.name}: gives {_size(shape)} values per image on {images}, not one "
            f"per class; add a flatten or global pooling layer before its dense layers"
        )
    if shape[0] != num_classes:
        denses = [index for index, layer in enumerate(design.layers) if layer.type in DENSES]
        where = f"{layer_key(design, denses[-1])} (dense)" if denses else f"models.{design.name}"
        raise v.ConfigError(
            f"{where}: the design gives {shape[0]} values per image, but {dataset or 'the dataset'} "
            f"has {num_classes} classes; end it with a dense layer of units: classes"
        )


def _output_shape(layer: Layer, shape: tuple[int, ...], num_classes: int, where: str, images: str) -> tuple[int, ...]:
    """The shape of one layer's output (batch axis left out), as Keras computes it."""
    o = layer.options
    if layer.type in CONVOLUTIONS + POOLINGS and len(shape) != 3:
        raise v.ConfigError(
            f"{where}: input is flat ({_size(shape)} values) on {images}, and a {layer.type} "
            f"layer needs an image; move it before the flatten or global pooling layer"
        )
    if layer.type in ("conv", "maxpool", "avgpool"):
        window = o["kernel"] if layer.type == "conv" else o["pool"]
        strides = o["strides"] or window  # a pool's strides default to its size
        height, width, channels = shape
        if o["padding"] == "valid" and (height < window[0] or width < window[1]):
            what = "kernel" if layer.type == "conv" else "pool"
            raise v.ConfigError(
                f"{where}: input is {height}x{width}, smaller than the {_size(window)} {what}, on "
                f"{images}; use padding: same, a smaller {what} or fewer layers that shrink the image"
            )
        if o["padding"] == "valid":
            out = [(size - k) // s + 1 for size, k, s in zip((height, width), window, strides)]
        else:
            out = [(size - 1) // s + 1 for size, s in zip((height, width), strides)]
        return (*out, o["filters"] if layer.type == "conv" else channels)
    if layer.type in ("globalavgpool", "globalmaxpool"):
        return (shape[-1],)
    if layer.type == "flatten":
        return (math.prod(shape),)
    if layer.type == "dense":  # on an image, Keras' Dense maps each pixel's channels
        return (*shape[:-1], num_classes if o["units"] == "classes" else o["units"])
    return shape  # dropout, batchnorm, activation


def classic_c5_size(size: int, axis: str) -> int:
    """Follow one spatial dimension through lenet5_classic's c1, s2, c3, s4, c5; return c5's size.

    Raises ValueError when the size does not fit its layer arithmetic (valid 5x5 convolutions
    and 2x2 subsampling without remainder).
    """
    c1 = size - 4
    if c1 < 2 or c1 % 2:
        raise _classic_size_error(axis, size, "c1 output (size-4) must be even and >= 2")
    c3 = c1 // 2 - 4
    if c3 < 2 or c3 % 2:
        raise _classic_size_error(axis, size, "c3 output (size/2-6) must be even and >= 2")
    c5 = c3 // 2 - 4
    if c5 < 1:
        raise _classic_size_error(axis, size, "c5 needs s4 maps of at least 5x5")
    return c5


def _classic_size_error(axis: str, size: int, why: str) -> ValueError:
    return ValueError(
        f"LeNet-5 cannot take {axis}={size}: {why}. The paper's input is "
        "32x32 (28x28 MNIST digits padded by 2 pixels); valid sizes are 32, 36, 40, ..."
    )


def _check_classic_input(design: Design, input_shape: tuple[int, ...], images: str) -> None:
    try:
        if len(input_shape) != 3:
            raise ValueError(f"expected height x width x channels, got {_size(input_shape)}")
        classic_c5_size(input_shape[0], "height")
        classic_c5_size(input_shape[1], "width")
    except ValueError as error:
        raise v.ConfigError(
            f"models.{design.name} (builtin lenet5_classic): cannot take {images}: {error}; "
            f"set normalize.pad_to (or the dataset's image_size) to one of those sizes"
        ) from None


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)
