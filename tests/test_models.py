"""Every registered design builds for every dataset shape and takes a training step."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline import designs
from pipeline.config import load_params
from pipeline.models import build_model, compile_model, layer_types

PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")

# (input shape, classes) of the datasets as the default params feed them to the models
SHAPES = {"mnist": ((32, 32, 1), 10), "gtsrb": ((32, 32, 3), 43)}


def registered_designs() -> dict[str, designs.Design]:
    """Every built-in (both outputs of lenet5_classic) and every design in params.yaml.

    A params.yaml entry that is a plain built-in is the same model as the built-in itself,
    so it is kept once, under its params.yaml name.
    """
    found = {f"builtin:{name}": designs.parse_design(name, {"builtin": name}, f"models.{name}")
             for name in designs.BUILTINS}
    found["builtin:lenet5_classic-softmax"] = designs.parse_design(
        "lenet5_classic", {"builtin": "lenet5_classic", "output": "softmax"}, "models.lenet5_classic")
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
    settings = PARAMS.train_settings(design.name) if design.name in PARAMS.models else PARAMS.train
    model = compile_model(build_model(design, input_shape, classes, seed=0), design, settings, steps_per_epoch=1)
    assert model.output_shape == (None, classes)  # `units: classes` became the class count
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, *input_shape)).astype("float32")
    y = rng.integers(0, classes, 8)
    loss, accuracy = model.train_on_batch(x, y)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0
    assert np.all(np.isfinite(model.predict(x, verbose=0)))


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
        (28, 28, 6), (14, 14, 6), (10, 10, 16), (5, 5, 16)]
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
    design = designs.parse_design("tiny", {"layers": [
        {"type": "conv", "filters": 4, "kernel": 3}, {"type": "maxpool", "pool": 2},
        {"type": "conv", "filters": 4, "kernel": 9}, {"type": "flatten"}, {"type": "dense", "units": "classes"},
    ]}, "models.tiny")
    with pytest.raises(designs.v.ConfigError, match=r"^models\.tiny\.layers\.2: a conv layer cannot take an input "
                                                    r"of shape \(7, 7, 4\)"):
        build_model(design, (16, 16, 1), 10, seed=0)


def test_keras_layer_names_are_the_params_indices():
    model = build_model(PARAMS.design("student_b"), (32, 32, 1), 10, seed=0)
    assert [layer.name for layer in model.layers[1:4]] == ["00_conv", "01_batchnorm", "02_activation"]
    assert isinstance(model.layers[-1], keras.layers.Dense)
