"""Every registered design builds for every dataset shape and takes a training step."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline import designs
from pipeline.config import load_params
from pipeline.core.validate import ConfigError
from pipeline.designs import language
from pipeline.designs.keras_build import build_model, counted_layers, keras_layer, layer_types
from pipeline.training.compile import compile_model, load_model

PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")

# (input shape, classes) of the datasets as the default params feed them to the models
SHAPES = {"mnist": ((32, 32, 1), 10), "gtsrb": ((32, 32, 3), 43)}


def registered_designs() -> dict[str, designs.Design]:
    """Every built-in (both outputs of lenet5_classic) and every design in params.yaml.

    A params.yaml entry that is a plain built-in is the same model as the built-in itself,
    so it is kept once, under its params.yaml name.
    """
    found = {
        f"builtin:{name}": designs.parse_design(name, {"builtin": name}, f"models.{name}") for name in designs.BUILTINS
    }
    found["builtin:lenet5_classic-softmax"] = designs.parse_design(
        "lenet5_classic", {"builtin": "lenet5_classic", "output": "softmax"}, "models.lenet5_classic"
    )
    for name, design in PARAMS.models.items():
        twin = f"builtin:{design.builtin}" + ("-softmax" if design.classic_output == "softmax" else "")
        if design.builtin is not None and found.get(twin) is not None and design.layers == found[twin].layers:
            found.pop(twin)
        found[f"params:{name}"] = design
    return found


DESIGNS = registered_designs()


@pytest.mark.parametrize("dataset", SHAPES)
@pytest.mark.parametrize("key", DESIGNS)
def test_design_builds_and_takes_a_training_step(key, dataset):
    design = DESIGNS[key]
    input_shape, classes = SHAPES[dataset]
    settings = PARAMS.train_settings(design.name, dataset) if design.name in PARAMS.models else PARAMS.train
    model = compile_model(build_model(design, input_shape, classes, seed=0), design, settings, steps_per_epoch=1)
    assert model.output_shape == (None, classes)  # `units: classes` became the class count
    assert designs.declared_layers(design) == counted_layers(model)  # what the course rule counts at params load
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, *input_shape)).astype("float32")
    y = rng.integers(0, classes, 8)
    loss, accuracy = model.train_on_batch(x, y)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0
    assert np.all(np.isfinite(model.predict(x, verbose=0)))


def random_design(rng: np.random.Generator, index: int) -> designs.Design:
    """A design of 1 to 7 random layers of every type, options drawn to hit the edges of Keras' arithmetic."""

    def pair(low: int, high: int) -> list[int]:
        return [int(v) for v in rng.integers(low, high + 1, 2)]

    kinds = ["conv", "maxpool", "avgpool", "globalavgpool", "flatten", "dense", "dropout", "batchnorm"]
    layers = []
    for kind in rng.choice(kinds, int(rng.integers(1, 8)), p=[0.3, 0.2, 0.15, 0.03, 0.08, 0.12, 0.06, 0.06]):
        padding = str(rng.choice(["valid", "same"]))
        if kind == "conv":
            layers.append(
                {
                    "type": "conv",
                    "filters": int(rng.integers(1, 5)),
                    "kernel": pair(1, 9),
                    "strides": pair(1, 3),
                    "padding": padding,
                }
            )
        elif kind in ("maxpool", "avgpool"):
            layer = {"type": kind, "pool": pair(1, 5), "padding": padding}
            if rng.random() < 0.5:
                layer["strides"] = pair(1, 3)
            layers.append(layer)
        elif kind == "dense":
            layers.append({"type": "dense", "units": "classes" if rng.random() < 0.5 else int(rng.integers(1, 12))})
        elif kind == "dropout":
            layers.append({"type": "dropout", "rate": 0.1})
        else:
            layers.append({"type": str(kind)})
    if rng.random() < 0.6:  # most designs end as classifiers do
        layers += [{"type": str(rng.choice(["flatten", "globalavgpool"]))}, {"type": "dense", "units": "classes"}]
    return designs.parse_design(f"random{index}", {"layers": layers, "student": False}, f"models.random{index}")


def keras_shapes(design: designs.Design, input_shape: tuple[int, ...], classes: int) -> list[tuple[int, ...]] | None:
    """Each layer's output shape as Keras builds it; None when Keras refuses a layer."""
    x = keras.Input(shape=input_shape)
    shapes = []
    for index, layer in enumerate(design.layers):
        try:
            x = keras_layer(layer, classes, f"l{index}")(x)
        except ValueError:
            return None
        shapes.append(tuple(x.shape[1:]))
    return shapes


def test_shape_inference_agrees_with_keras_on_random_designs():
    """What params-time checking refuses is exactly what Keras refuses to build or cannot train as a classifier,
    and each layer's inferred shape is the one Keras builds."""
    rng = np.random.default_rng(18)
    outcomes = {"built": 0, "keras refused": 0, "not a classifier": 0}
    for index in range(150):
        design = random_design(rng, index)
        input_shape = (int(rng.integers(3, 33)), int(rng.integers(3, 33)), int(rng.choice([1, 3])))
        classes = int(rng.choice([2, 10]))
        built = keras_shapes(design, input_shape, classes)
        try:
            designs.check_shapes(design, input_shape, classes)
            refused = None
        except ConfigError as error:
            refused = str(error)
        if built is None:
            assert refused is not None and ("smaller than" in refused or "needs an image" in refused), (design, refused)
            outcomes["keras refused"] += 1
        elif built[-1] != (classes,):
            assert refused is not None and "per image" in refused, (design, built, refused)
            outcomes["not a classifier"] += 1
        else:
            assert refused is None, (design, built, refused)
            outcomes["built"] += 1
        if built is not None:  # the inference follows Keras layer by layer
            shape = input_shape
            for layer, keras_shape in zip(design.layers, built):
                shape = language._output_shape(layer, shape, classes, "", "")
                assert shape == keras_shape, (design, layer)
    assert min(outcomes.values()) >= 10, outcomes  # every outcome was tried


def test_registry_covers_every_builtin_and_params_design():
    covered = {d.builtin for d in DESIGNS.values()} | {d.name for d in DESIGNS.values()}
    assert set(designs.BUILTINS) <= covered and set(PARAMS.models) <= covered


# Hand-computed on 28x28x1 with 10 classes, layer by layer (weights + biases):
EXPECTED_PARAMS_28 = {
    # conv 6@5x5 same: 156; conv 16@5x5 on 14x14x6: 2,416; dense 400->120: 48,120; 120->84: 10,164; 84->10: 850
    "lenet5_modern": 61_706,
    "lenet5_d2l": 61_706,  # the same shapes as D2L's LeNet (padding 2 = same for 5x5)
    # conv 64@2x2: 320; conv 32@2x2 on 64: 8,224; dense 7*7*32=1,568->256: 401,664; 256->10: 2,570
    "cnn_primer": 412_778,
    # convs: 3,200 + 73,856 + 147,584 + 295,168 + 590,080; dense 3*3*256->128: 295,040; 128->64: 8,256; 64->10: 650
    "cnn_homl": 1_413_834,
}


@pytest.mark.parametrize("name, expected", EXPECTED_PARAMS_28.items())
def test_builtin_parameter_counts_on_28x28(name, expected):
    design = designs.parse_design(name, {"builtin": name}, f"models.{name}")
    assert build_model(design, (28, 28, 1), 10, seed=0).count_params() == expected


def test_lenet5_d2l_is_d2ls_lenet():
    design = designs.parse_design("lenet5_d2l", {"builtin": "lenet5_d2l"}, "models.lenet5_d2l")
    model = build_model(design, (28, 28, 1), 10, seed=0)
    assert layer_types(model) == ["conv", "avgpool", "conv", "avgpool", "flatten", "dense", "dense", "dense"]
    assert [tuple(layer.output.shape[1:]) for layer in model.layers[1:5]] == [
        (28, 28, 6),
        (14, 14, 6),
        (10, 10, 16),
        (5, 5, 16),
    ]
    assert model.layers[1].activation.__name__ == "sigmoid"


def test_lenet5_classic_layers_count_as_what_they_are_in_the_paper():
    design = designs.parse_design("c", {"builtin": "lenet5_classic"}, "models.c")
    model = build_model(design, (32, 32, 1), 10, seed=0)
    assert layer_types(model) == ["conv", "avgpool", "conv", "avgpool", "conv", "flatten", "dense", "dense"]


def test_same_seed_same_initial_weights():
    design = PARAMS.design("student_a")
    first, second = (build_model(design, (32, 32, 1), 10, seed=7) for _ in range(2))
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    other = build_model(design, (32, 32, 1), 10, seed=8)
    assert not np.array_equal(first.get_weights()[0], other.get_weights()[0])


def test_a_layer_that_does_not_fit_the_image_names_its_key():
    design = designs.parse_design(
        "tiny",
        {
            "layers": [
                {"type": "conv", "filters": 4, "kernel": 3},
                {"type": "maxpool", "pool": 2},
                {"type": "conv", "filters": 4, "kernel": 9},
                {"type": "flatten"},
                {"type": "dense", "units": "classes"},
            ]
        },
        "models.tiny",
    )
    with pytest.raises(
        ConfigError,
        match=r"^models\.tiny\.layers\.2 \(conv\): input is 7x7, smaller than "
        r"the 9x9 kernel, on 16x16x1 images; use padding: same",
    ):
        build_model(design, (16, 16, 1), 10, seed=0)  # checked before Keras builds anything


def test_keras_layer_names_are_the_params_indices():
    model = build_model(PARAMS.design("student_b"), (32, 32, 1), 10, seed=0)
    assert [layer.name for layer in model.layers[1:4]] == ["00_conv", "01_batchnorm", "02_activation"]
    assert isinstance(model.layers[-1], keras.layers.Dense)


MIXED_DESIGNS = {key: design for key, design in DESIGNS.items() if design.builtin != "cnn_homl"}  # 117 M MACs: slow


@pytest.mark.parametrize("key", MIXED_DESIGNS)
def test_design_trains_in_mixed_bfloat16_and_keeps_float32_scores(key, tmp_path):
    """train.precision: mixed_bfloat16 computes in bfloat16 but the output layer; the saved model keeps it so."""
    design = MIXED_DESIGNS[key]
    settings = PARAMS.train_settings(design.name, "mnist") if design.name in PARAMS.models else PARAMS.train
    model = compile_model(
        build_model(design, (32, 32, 1), 10, seed=0, precision="mixed_bfloat16"), design, settings, steps_per_epoch=1
    )
    assert model.layers[1].compute_dtype == "bfloat16" and model.layers[1].variable_dtype == "float32"
    rbf = design.builtin == "lenet5_classic" and design.classic_output == "rbf"
    assert model.output.dtype == ("float64" if rbf else "float32")  # the RBF output computes in float64 always
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 32, 32, 1)).astype("float32")
    loss, _ = model.train_on_batch(x, rng.integers(0, 10, 8))
    assert np.isfinite(loss)
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras")
    assert loaded.layers[1].compute_dtype == "bfloat16"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_mixed_precision_build_leaves_no_policy_behind():
    design = PARAMS.design("student_b")
    build_model(design, (32, 32, 1), 10, seed=3, precision="mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32"
    after = build_model(design, (32, 32, 1), 10, seed=3)
    assert {layer.dtype_policy.name for layer in after.layers} == {"float32"}
