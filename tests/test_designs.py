"""The layer language: strict validation that names the exact key, and the course rule."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from pipeline import designs
from pipeline.config import load_params, parse_params
from pipeline.validate import ConfigError

RAW = load_params(Path(__file__).resolve().parents[1] / "params.yaml").raw


def with_change(path: str, value: Any) -> dict:
    """params.yaml as parsed, with the value at dotted `path` replaced (`...=DELETE` removes it)."""
    raw = copy.deepcopy(RAW)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(last)] = value
    elif value is DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


DELETE = object()


@pytest.mark.parametrize("path, value, message", [
    ("models.student_a.layers.3.kernel", 0, "models.student_a.layers.3.kernel: must be a positive int, got 0"),
    ("models.student_a.layers.0.kernel", [3, 0], "models.student_a.layers.0.kernel.1: must be a positive int, got 0"),
    ("models.student_a.layers.0.kernel", "3x3",
     "models.student_a.layers.0.kernel: must be an int or a [height, width] pair of ints, got '3x3'"),
    ("models.student_a.layers.0.filtres", 32, "models.student_a.layers.0.filtres: unknown key; allowed keys here:"),
    ("models.student_a.layers.0.filters", DELETE, "models.student_a.layers.0.filters: missing; this key is required"),
    ("models.student_a.layers.1.type", "maxpooling", "models.student_a.layers.1.type: must be one of conv, maxpool,"),
    ("models.student_a.layers.2", "conv", "models.student_a.layers.2: must be a mapping of keys to values, got 'conv'"),
    ("models.student_a.layers.6.rate", 1.5, "models.student_a.layers.6.rate: must be a number in [0.0, 1.0), got 1.5"),
    ("models.student_a.layers.9.units", "class",
     "models.student_a.layers.9.units: must be a positive int or the word classes, got 'class'"),
    ("models.student_a.layers.7.activation", "relu6", "models.student_a.layers.7.activation: must be one of linear,"),
    ("models.student_a.layers.7.initializer", "he", "models.student_a.layers.7.initializer: must be one of"),
    ("models.student_a.layers.0.padding", "full", "models.student_a.layers.0.padding: must be one of valid, same"),
    ("models.student_b.layers.1.momentum", 1.0, "models.student_b.layers.1.momentum: must be a number in [0.0, 1.0)"),
    ("models.student_b.layers.0.use_bias", "no", "models.student_b.layers.0.use_bias: must be true or false"),
    ("models.student_a.layers", [], "models.student_a.layers: must be a non-empty list of layers, got []"),
    ("models.student_a.student", "yes", "models.student_a.student: must be true or false, got 'yes'"),
    ("models.student_a.builtin", "lenet5_modern", "models.student_a: must have exactly one of builtin"),
    ("models.lenet5_modern.builtin", "lenet6", "models.lenet5_modern.builtin: must be one of lenet5_modern,"),
    ("models.lenet5_modern.output", "softmax", "models.lenet5_modern.output: only lenet5_classic has an output option"),
    ("models.lenet5_classic.output", "mse", "models.lenet5_classic.output: must be one of rbf, softmax, got 'mse'"),
    ("models.lenet5_d2l.train.learning_rate", 0, "models.lenet5_d2l.train.learning_rate: must be a number in (0.0,"),
    ("models.lenet5_d2l.train.epoch", 3, "models.lenet5_d2l.train.epoch: unknown key"),
    ("models.lenet5_d2l.layer", [], "models.lenet5_d2l.layer: unknown key"),
])
def test_bad_design_fails_naming_the_exact_key(path, value, message):
    with pytest.raises(ConfigError) as error:
        parse_params(with_change(path, value))
    assert str(error.value).startswith(message), str(error.value)


def test_params_yaml_designs_parse():
    models = parse_params(copy.deepcopy(RAW)).models
    assert {name for name, d in models.items() if d.student} == {"student_a", "student_b"}
    assert models["lenet5_classic"].layers is None and models["lenet5_classic"].classic_output == "rbf"
    assert models["lenet5_d2l"].train_overrides == {"learning_rate": 0.003}


def test_every_builtin_except_the_classic_is_written_in_the_layer_language():
    for name, layers in designs.BUILTINS.items():
        design = designs.parse_design(name, {"builtin": name}, f"models.{name}")
        assert (design.layers is None) == (name == "lenet5_classic")
        assert not design.student


def test_layer_defaults_follow_keras():
    layer = designs.parse_layer({"type": "conv", "filters": 8, "kernel": [3, 5]}, "x")
    assert layer.options == {"filters": 8, "kernel": (3, 5), "strides": (1, 1), "padding": "valid",
                             "activation": "linear", "initializer": "glorot_uniform", "use_bias": True}
    assert designs.parse_layer({"type": "maxpool"}, "x").options == {"pool": (2, 2), "strides": None,
                                                                      "padding": "valid"}


# ---------------------------------------------------------------------------
# the course rule, checked on the built model
# ---------------------------------------------------------------------------
CONV = {"type": "conv", "filters": 4, "kernel": 3, "padding": "same"}
POOL = {"type": "maxpool"}
FLAT = {"type": "flatten"}
DENSE = {"type": "dense", "units": "classes", "activation": "softmax"}


def build(layers: list[dict], student: bool = True):
    from pipeline.models import build_model

    design = designs.parse_design("mine", {"layers": layers, "student": student}, "models.mine")
    return build_model(design, (32, 32, 1), 10, seed=0)


@pytest.mark.parametrize("layers, problem, counted", [
    ([CONV, POOL, FLAT] + [{"type": "dense", "units": 8}] * 11 + [DENSE], "has 15 layers, the rule allows at most 14",
     "Layers counted (15): 00_conv (conv), 01_maxpool (maxpool), 02_flatten (flatten), 03_dense (dense),"),
    ([POOL, FLAT, DENSE], "has no convolution layer",
     "Layers counted (3): 00_maxpool (maxpool), 01_flatten (flatten), 02_dense (dense)"),
    ([CONV, FLAT, DENSE], "has no pooling layer",
     "Layers counted (3): 00_conv (conv), 01_flatten (flatten), 02_dense (dense)"),
    ([CONV, POOL, {"type": "globalavgpool"}], "has no dense layer",
     "Layers counted (3): 00_conv (conv), 01_maxpool (maxpool), 02_globalavgpool (globalavgpool)"),
    ([FLAT, DENSE], "has no convolution layer; has no pooling layer",
     "Layers counted (2): 00_flatten (flatten), 01_dense (dense)"),
])
def test_course_rule_violations_list_the_layers_counted(layers, problem, counted):
    with pytest.raises(ConfigError) as error:
        build(layers)
    message = str(error.value)
    assert message.startswith("models.mine: breaks the course rule for student designs")
    assert problem in message
    assert counted in message


def test_course_rule_allows_fourteen_layers_and_global_pooling():
    model = build([CONV, POOL, FLAT] + [{"type": "dense", "units": 8}] * 10 + [DENSE])
    assert len(model.layers) - 1 == 14
    build([CONV, {"type": "globalavgpool"}, DENSE])
    build([CONV, {"type": "avgpool"}, FLAT, DENSE])


def test_course_rule_only_applies_to_student_designs():
    build([FLAT, DENSE], student=False)  # a reference design may be anything
    from pipeline.models import build_model

    # a built-in marked as a student design is checked too: cnn_homl has 14 layers, so it passes
    design = designs.parse_design("homl", {"builtin": "cnn_homl", "student": True}, "models.homl")
    assert len(build_model(design, (32, 32, 1), 10, seed=0).layers) - 1 == 14


def test_course_rule_on_layer_names_and_types():
    designs.check_course_rule([("c", "conv"), ("p", "maxpool"), ("f", "flatten"), ("d", "dense")], "ok")
    with pytest.raises(ConfigError, match=r"models\.x: .*has no pooling layer\. "
                                          r"Layers counted \(2\): c1 \(conv\), f6 \(dense\)$"):
        designs.check_course_rule([("c1", "conv"), ("f6", "dense")], "x")
