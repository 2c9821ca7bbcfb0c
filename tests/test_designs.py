"""The layer language: strict validation that names the exact key, and the course rule."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline import designs
from pipeline.config import load_params, parse_params
from pipeline.core.validate import ConfigError

REPO = Path(__file__).resolve().parents[1]
RAW = load_params(REPO / "params.yaml").raw


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


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("models.student_a.layers.3.kernel", 0, "models.student_a.layers.3.kernel: must be a positive int, got 0"),
        (
            "models.student_a.layers.0.kernel",
            [3, 0],
            "models.student_a.layers.0.kernel.1: must be a positive int, got 0",
        ),
        (
            "models.student_a.layers.0.kernel",
            "3x3",
            "models.student_a.layers.0.kernel: must be an int or a [height, width] pair of ints, got '3x3'",
        ),
        ("models.student_a.layers.0.filtres", 32, "models.student_a.layers.0.filtres: unknown key; allowed keys here:"),
        (
            "models.student_a.layers.0.filters",
            DELETE,
            "models.student_a.layers.0.filters: missing; this key is required",
        ),
        (
            "models.student_a.layers.1.type",
            "maxpooling",
            "models.student_a.layers.1.type: must be one of conv, maxpool,",
        ),
        (
            "models.student_a.layers.2",
            "conv",
            "models.student_a.layers.2: must be a mapping of keys to values, got 'conv'",
        ),
        (
            "models.student_a.layers.6.rate",
            1.5,
            "models.student_a.layers.6.rate: must be a number in [0.0, 1.0), got 1.5",
        ),
        (
            "models.student_a.layers.9.units",
            "class",
            "models.student_a.layers.9.units: must be a positive int or the word classes, got 'class'",
        ),
        (
            "models.student_a.layers.7.activation",
            "relu6",
            "models.student_a.layers.7.activation: must be one of linear,",
        ),
        ("models.student_a.layers.7.initializer", "he", "models.student_a.layers.7.initializer: must be one of"),
        ("models.student_a.layers.0.padding", "full", "models.student_a.layers.0.padding: must be one of valid, same"),
        (
            "models.student_b.layers.1.momentum",
            1.0,
            "models.student_b.layers.1.momentum: must be a number in [0.0, 1.0)",
        ),
        ("models.student_b.layers.0.use_bias", "no", "models.student_b.layers.0.use_bias: must be true or false"),
        ("models.student_a.layers", [], "models.student_a.layers: must be a non-empty list of layers, got []"),
        ("models.student_a.student", "yes", "models.student_a.student: must be true or false, got 'yes'"),
        ("models.student_a.builtin", "lenet5_modern", "models.student_a: must have exactly one of builtin"),
        ("models.lenet5_modern.builtin", "lenet6", "models.lenet5_modern.builtin: must be one of lenet5_modern,"),
        (
            "models.lenet5_modern.output",
            "softmax",
            "models.lenet5_modern.output: only lenet5_classic has an output option",
        ),
        ("models.lenet5_classic.output", "mse", "models.lenet5_classic.output: must be one of rbf, softmax, got 'mse'"),
        (
            "models.lenet5_d2l.train.learning_rate",
            0,
            "models.lenet5_d2l.train.learning_rate: must be a number in (0.0,",
        ),
        ("models.lenet5_d2l.train.epoch", 3, "models.lenet5_d2l.train.epoch: unknown key"),
        ("models.lenet5_d2l.layer", [], "models.lenet5_d2l.layer: unknown key"),
    ],
)
def test_bad_design_fails_naming_the_exact_key(path, value, message):
    with pytest.raises(ConfigError) as error:
        parse_params(with_change(path, value))
    assert str(error.value).startswith(message), str(error.value)


def test_params_yaml_designs_parse():
    models = parse_params(copy.deepcopy(RAW)).models
    assert {name for name, d in models.items() if d.student} == {
        "student_a",
        "student_b",
        "student_fashion",
        "student_gtsrb",
    }
    assert models["lenet5_classic"].layers is None and models["lenet5_classic"].classic_output == "rbf"
    assert models["lenet5_d2l"].train_overrides == {"learning_rate": 0.003}


def test_every_builtin_except_the_classic_is_written_in_the_layer_language():
    for name in designs.BUILTINS:
        design = designs.parse_design(name, {"builtin": name}, f"models.{name}")
        assert (design.layers is None) == (name == "lenet5_classic")
        assert not design.student


def test_layer_defaults_follow_keras():
    layer = designs.parse_layer({"type": "conv", "filters": 8, "kernel": [3, 5]}, "x")
    assert layer.options == {
        "filters": 8,
        "kernel": (3, 5),
        "strides": (1, 1),
        "padding": "valid",
        "activation": "linear",
        "initializer": "glorot_uniform",
        "use_bias": True,
    }
    assert designs.parse_layer({"type": "maxpool"}, "x").options == {
        "pool": (2, 2),
        "strides": None,
        "padding": "valid",
    }


# ---------------------------------------------------------------------------
# the course rule, checked on the built model
# ---------------------------------------------------------------------------
CONV = {"type": "conv", "filters": 4, "kernel": 3, "padding": "same"}
POOL = {"type": "maxpool"}
FLAT = {"type": "flatten"}
DENSE = {"type": "dense", "units": "classes", "activation": "softmax"}


def build(layers: list[dict], student: bool = True):
    from pipeline.designs.keras_build import build_model

    design = designs.parse_design("mine", {"layers": layers, "student": student}, "models.mine")
    return build_model(design, (32, 32, 1), 10, seed=0)


@pytest.mark.parametrize(
    "layers, problem, counted",
    [
        (
            [CONV, POOL, FLAT] + [{"type": "dense", "units": 8}] * 11 + [DENSE],
            "has 15 layers, the rule allows at most 14",
            "Layers counted (15): 00_conv (conv), 01_maxpool (maxpool), 02_flatten (flatten), 03_dense (dense),",
        ),
        (
            [POOL, FLAT, DENSE],
            "has no convolution layer",
            "Layers counted (3): 00_maxpool (maxpool), 01_flatten (flatten), 02_dense (dense)",
        ),
        (
            [CONV, FLAT, DENSE],
            "has no pooling layer",
            "Layers counted (3): 00_conv (conv), 01_flatten (flatten), 02_dense (dense)",
        ),
        (
            [CONV, POOL, {"type": "globalavgpool"}],
            "has no dense layer",
            "Layers counted (3): 00_conv (conv), 01_maxpool (maxpool), 02_globalavgpool (globalavgpool)",
        ),
        (
            [FLAT, DENSE],
            "has no convolution layer; has no pooling layer",
            "Layers counted (2): 00_flatten (flatten), 01_dense (dense)",
        ),
    ],
)
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
    from pipeline.designs.keras_build import build_model

    # a built-in marked as a student design is checked too: cnn_homl has 14 layers, so it passes
    design = designs.parse_design("homl", {"builtin": "cnn_homl", "student": True}, "models.homl")
    assert len(build_model(design, (32, 32, 1), 10, seed=0).layers) - 1 == 14


def test_course_rule_on_layer_names_and_types():
    designs.check_course_rule([("c", "conv"), ("p", "maxpool"), ("f", "flatten"), ("d", "dense")], "ok")
    with pytest.raises(
        ConfigError,
        match=r"models\.x: .*has no pooling layer\. "
        r"Layers counted \(2\): c1 \(conv\), f6 \(dense\)$",
    ):
        designs.check_course_rule([("c1", "conv"), ("f6", "dense")], "x")


# ---------------------------------------------------------------------------
# checked when params load: the course rule and the shapes, for what `dvc repro` builds
# ---------------------------------------------------------------------------
def params_with(layers: list[dict] | None = None, **changes: Any) -> dict:
    """params.yaml with student_a's layers replaced and student_a in the experiments."""
    raw = copy.deepcopy(RAW)
    raw["experiments"]["models"] = ["lenet5_modern", "student_a"]
    if layers is not None:
        raw["models"]["student_a"]["layers"] = layers
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value
    return raw


@pytest.mark.parametrize(
    "layers, changes, message",
    [
        # the example: pools shrink 32x32 to 1x1, then one more
        (
            [CONV, POOL, POOL, POOL, POOL, POOL, POOL, FLAT, DENSE],
            {},
            "models.student_a.layers.6 (maxpool): input is 1x1, smaller than the 2x2 pool, on mnist's 32x32x1 images; "
            "use padding: same, a smaller pool or fewer layers that shrink the image",
        ),
        (
            [
                {"type": "conv", "filters": 4, "kernel": 5},
                POOL,
                {"type": "conv", "filters": 4, "kernel": [3, 15]},
                POOL,
                FLAT,
                DENSE,
            ],
            {},
            "models.student_a.layers.2 (conv): input is 14x14, smaller than the 3x15 kernel, on mnist's 32x32x1 images",
        ),
        # valid strided windows: 32 -> (32-4)//4+1 = 8 -> (8-3)//2+1 = 3, smaller than the 4x4 pool
        (
            [
                {"type": "conv", "filters": 4, "kernel": 4, "strides": 4},
                {"type": "maxpool", "pool": 3, "strides": 2},
                {"type": "avgpool", "pool": 4},
                FLAT,
                DENSE,
            ],
            {},
            "models.student_a.layers.2 (avgpool): input is 3x3, smaller than the 4x4 pool",
        ),
        (
            [CONV, POOL, FLAT, {"type": "dense", "units": 128, "activation": "relu"}],
            {},
            "models.student_a.layers.3 (dense): the design gives 128 values per image, but mnist has 10 classes; "
            "end it with a dense layer of units: classes",
        ),
        (
            [CONV, POOL, {"type": "globalavgpool"}, {"type": "dense", "units": 10}],
            {"experiments.datasets": ["gtsrb"]},
            "models.student_a.layers.3 (dense): the design gives 10 values per image, but gtsrb has 43 classes",
        ),
        (
            [CONV, POOL, DENSE],
            {},
            "models.student_a: gives 16x16x10 values per image on mnist's 32x32x1 images, not one per class; "
            "add a flatten or global pooling layer before its dense layers",
        ),
        (
            [CONV, POOL, FLAT, CONV, DENSE],
            {},
            "models.student_a.layers.3 (conv): input is flat (1024 values) on mnist's 32x32x1 images, and a conv layer "
            "needs an image; move it before the flatten or global pooling layer",
        ),
        # GTSRB's images are image_size x image_size x 3 (unpadded: pad_to only pads smaller images)
        (
            None,
            {"datasets.gtsrb.image_size": 8, "normalize.pad_to": None, "experiments.datasets": ["gtsrb"]},
            "models.lenet5_modern (builtin lenet5_modern), layer 2 (conv): input is 4x4, smaller than the 5x5 kernel, "
            "on gtsrb's 8x8x3 images",
        ),
        # pad_to: null leaves MNIST at 28x28, which lenet5_classic's layer arithmetic does not fit
        (
            None,
            {"normalize.pad_to": None, "experiments.models": ["lenet5_classic"]},
            "models.lenet5_classic (builtin lenet5_classic): cannot take mnist's 28x28x1 images: LeNet-5 cannot take "
            "height=28: c5 needs s4 maps of at least 5x5.",
        ),
        (
            None,
            {
                "datasets.gtsrb.image_size": 8,
                "normalize.pad_to": None,
                "normalize.grayscale": True,
                "experiments.datasets": ["gtsrb"],
                "experiments.models": ["cnn_primer", "lenet5_classic"],
            },
            "models.lenet5_classic (builtin lenet5_classic): cannot take gtsrb's 8x8x1 images",
        ),
        (
            [CONV, FLAT, DENSE],
            {},
            "models.student_a: breaks the course rule for student designs (fewer than 15 layers, at least one convolution, "
            "one pooling and one dense layer): it has no pooling layer",
        ),
    ],
)
def test_a_design_that_cannot_work_is_refused_when_params_load(layers, changes, message):
    with pytest.raises(ConfigError) as error:
        parse_params(params_with(layers, **changes))
    assert str(error.value).startswith(message), str(error.value)


def test_the_course_rule_is_checked_for_every_student_design_declared():
    raw = params_with()
    raw["experiments"]["models"] = ["lenet5_modern"]
    raw["models"]["draft"] = {"layers": [CONV] * 14 + [FLAT, DENSE]}  # not built, but declared: still checked
    with pytest.raises(ConfigError, match=r"^models\.draft: breaks the course rule .* has 16 layers"):
        parse_params(raw)


def test_shapes_are_checked_for_the_configured_datasets_only():
    """A design that fits MNIST's 32x32 but not GTSRB resized to 16x16 is fine while GTSRB is not configured."""
    tight = [
        {"type": "conv", "filters": 4, "kernel": 9},
        POOL,
        {"type": "conv", "filters": 4, "kernel": 5},
        FLAT,
        DENSE,
    ]
    unpadded = {"normalize.pad_to": None, "datasets.gtsrb.image_size": 16}
    params = parse_params(params_with(tight, **unpadded, **{"experiments.datasets": ["mnist"]}))
    with pytest.raises(ConfigError, match=r"layers\.2 \(conv\): input is 4x4, smaller than the 5x5 kernel, on gtsrb"):
        parse_params(params_with(tight, **unpadded, **{"experiments.datasets": ["mnist", "gtsrb"]}))
    with pytest.raises(ConfigError, match="on gtsrb's 16x16x3 images"):  # what a stage asks for the pair it runs
        params.check_design("student_a", "gtsrb")


def test_input_shapes_follow_the_dataset_and_normalize():
    params = parse_params(params_with())
    assert params.input_shape("mnist") == (32, 32, 1) and params.input_shape("gtsrb") == (32, 32, 3)
    params = parse_params(
        params_with(
            **{
                "normalize.pad_to": None,
                "normalize.grayscale": True,
                "datasets.gtsrb.image_size": 48,
                "experiments.models": ["student_a"],
            }
        )
    )
    assert params.input_shape("fashion_mnist") == (28, 28, 1) and params.input_shape("gtsrb") == (48, 48, 1)


def test_input_shapes_and_the_design_check_follow_a_datasets_own_normalize():
    """normalize.per_dataset.<dataset> changes the images a dataset's designs get, so params load judges those."""
    per_dataset = {"gtsrb": {"grayscale": True, "pad_to": 48}, "mnist": {"pad_to": None}}
    params = parse_params(params_with(**{"normalize.per_dataset": per_dataset}))
    assert params.input_shape("gtsrb") == (48, 48, 1)  # 32x32 signs, padded to 48 and made gray
    assert params.input_shape("mnist") == (28, 28, 1)  # unpadded
    assert params.input_shape("fashion_mnist") == (32, 32, 1)  # the shared pad_to: 32
    tight = [
        {"type": "conv", "filters": 4, "kernel": 9},
        POOL,
        {"type": "conv", "filters": 4, "kernel": 11},
        FLAT,
        DENSE,
    ]
    parse_params(params_with(tight))  # 32 -> 24 -> 12 -> 2: fits the padded images
    with pytest.raises(
        ConfigError, match=r"layers\.2 \(conv\): input is 10x10, smaller than the 11x11 kernel, on mnist"
    ):
        parse_params(params_with(tight, **{"normalize.per_dataset": {"mnist": {"pad_to": None}}}))


def test_checking_designs_needs_no_tensorflow():
    """params.yaml is checked in milliseconds: neither TensorFlow nor Keras is imported to check a design."""
    probe = (
        "import sys, time; t = time.perf_counter(); from pipeline.config import load_params; "
        "load_params(); print(time.perf_counter() - t, sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tensorflow', 'keras'}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    seconds, imported = result.stdout.split(maxsplit=1)
    assert imported.strip() == "[]"
    assert float(seconds) < 2.0, seconds  # about 0.1 s here, most of it NumPy's import
