"""LeNet-5 as LeCun et al. (1998) built it: the paper's layers, counts, output and loss."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.portable import lenet5_classic as classic
from tests.reference_ops import conv_forward

# Section II-B of the paper, layer by layer; the output's 840 are the fixed prototypes.
PAPER_PARAMS = {"c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48120, "flatten": 0, "f6": 10164, "output": 840}


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return classic.build_lenet5_classic(seed=0)


def test_per_layer_parameter_counts_are_the_papers(model):
    counts = {layer.name: layer.count_params() for layer in model.layers[1:]}
    assert counts == PAPER_PARAMS
    assert model.count_params() == 60_840
    # the prototypes are fixed by hand in the paper, so not trained
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 60_000
    assert [w.name for w in model.non_trainable_weights] == ["prototypes"]


def test_output_shapes_follow_the_paper(model):
    shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers[1:]}
    assert shapes == {
        "c1": (28, 28, 6),
        "s2": (14, 14, 6),
        "c3": (10, 10, 16),
        "s4": (5, 5, 16),
        "c5": (1, 1, 120),
        "flatten": (120,),
        "f6": (84,),
        "output": (10,),
    }


def test_squashing_function_is_scaled_tanh():
    x = np.linspace(-3, 3, 13).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(classic.scaled_tanh(x)), 1.7159 * np.tanh(2 * x / 3), rtol=1e-6
    )
    # chosen so that f(+-1) = +-1 (Appendix A)
    assert abs(float(classic.scaled_tanh(np.float32(1.0))) - 1.0) < 1e-4


def test_c3_connections_are_table_one():
    table = classic.C3_CONNECTIONS
    assert len(table) == 16 and sum(len(c) for c in table) == 60
    assert [len(c) for c in table] == [3] * 6 + [4] * 9 + [6]
    # maps 0-5: three contiguous S2 maps (cyclically), 6-11: four contiguous
    for m in range(6):
        assert table[m] == tuple(sorted((m + i) % 6 for i in range(3)))
        assert table[6 + m] == tuple(sorted((m + i) % 6 for i in range(4)))
    assert table[12:15] == ((0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5))


def test_subsampling_is_sum_times_coefficient_plus_bias_squashed():
    layer = classic.TrainableSubsampling(2)
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 3)).astype("float32")
    layer.build(x.shape)
    layer.coefficient.assign([0.5, -1.0, 2.0])
    layer.bias.assign([0.1, 0.0, -0.2])
    sums = x.reshape(2, 2, 2, 3, 2, 3).sum(axis=(2, 4))
    expected = 1.7159 * np.tanh(2 / 3 * (sums * [0.5, -1.0, 2.0] + [0.1, 0.0, -0.2]))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-6)


def test_c3_is_a_convolution_with_only_the_connected_kernels(model):
    c3 = model.get_layer("c3")
    kernel = keras.ops.convert_to_numpy(c3.full_kernel())
    mask = c3.connection_mask(6)
    assert kernel.shape == (5, 5, 6, 16)
    assert np.all(kernel[:, :, ~mask] == 0) and np.all(kernel[:, :, mask] != 0)
    rng = np.random.default_rng(1)
    c3.bias.assign(rng.normal(0, 0.1, 16).astype("float32"))
    x = rng.standard_normal((2, 14, 14, 6)).astype("float32")
    bias = keras.ops.convert_to_numpy(c3.bias).reshape(1, 1, 1, -1)
    expected = conv_forward(x.astype(np.float64), kernel.astype(np.float64), bias, None, padding="valid")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(c3(x)), 1.7159 * np.tanh(2 / 3 * expected), rtol=1e-4, atol=1e-5
    )
    # C3 map 0 sees S2 maps 0-2 only: changing map 5 leaves it alone, but not map 15 (sees all)
    changed = x.copy()
    changed[..., 5] += 1.0
    before, after = keras.ops.convert_to_numpy(c3(x)), keras.ops.convert_to_numpy(c3(changed))
    np.testing.assert_array_equal(before[..., 0], after[..., 0])
    assert not np.allclose(before[..., 15], after[..., 15])


def test_rbf_output_is_squared_distance_to_fixed_prototypes(model):
    rbf = model.get_layer("output")
    prototypes = keras.ops.convert_to_numpy(rbf.prototypes)
    assert prototypes.shape == (10, 84) and set(np.unique(prototypes)) == {-1.0, 1.0}
    np.testing.assert_array_equal(prototypes, classic.digit_prototypes())  # the 7x12 digit bitmaps
    assert len({p.tobytes() for p in prototypes}) == 10
    f6 = np.random.default_rng(2).uniform(-1.7, 1.7, (5, 84))
    y = keras.ops.convert_to_numpy(rbf.distances(f6))
    np.testing.assert_allclose(y, ((f6[:, None, :] - prototypes[None]) ** 2).sum(-1), rtol=1e-12)
    # the output is a class score: argmax of the output = argmin of the penalties (the paper's rule)
    p = keras.ops.convert_to_numpy(rbf(f6))
    np.testing.assert_array_equal(p.argmax(1), y.argmin(1))


def test_rbf_loss_is_equation_nine():
    y = np.array([[3.0, 40.0, 7.5], [90.0, 0.2, 600.0]])  # penalties, including far beyond float32's exp
    labels = np.array([0, 2])
    j = classic.DEFAULT_RUBBISH_PENALTY
    p = classic.rbf_to_probabilities(keras.ops.convert_to_tensor(y, "float64"), j)
    loss = float(classic.RBFLoss()(labels, p))
    expected = np.mean([y[n, labels[n]] + np.log(np.exp(-j) + np.exp(-y[n]).sum()) for n in range(2)])
    assert loss == pytest.approx(expected, rel=1e-6)


def test_rbf_loss_decreases_on_a_tiny_batch():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(-0.1, 1.175, (16, 32, 32, 1)).astype("float32"), rng.integers(0, 10, 16)
    model = classic.build_lenet5_classic(seed=1)
    model.compile(optimizer=keras.optimizers.Adam(0.002), loss=classic.loss_for("rbf"), metrics=["accuracy"])
    losses = [float(model.train_on_batch(x, y)[0]) for _ in range(20)]
    assert all(np.isfinite(losses))
    # from ~84 (every penalty ~84 at initialisation) to ~35 in these 20 steps
    assert max(losses[-3:]) < 0.6 * losses[0]


def test_accuracy_metric_is_meaningful_with_sparse_labels(model):
    x = np.random.default_rng(4).uniform(-0.1, 1.175, (12, 32, 32, 1)).astype("float32")
    predicted = model.predict(x, verbose=0).argmax(1)
    model.compile(optimizer="sgd", loss=classic.loss_for("rbf"), metrics=["accuracy"])
    assert model.evaluate(x, predicted, verbose=0, return_dict=True)["accuracy"] == 1.0
    assert model.evaluate(x, (predicted + 1) % 10, verbose=0, return_dict=True)["accuracy"] == 0.0


@pytest.mark.parametrize("output", ["rbf", "softmax"])
def test_save_and_load_round_trip(tmp_path, output):
    model = classic.build_lenet5_classic(seed=2, output=output)
    model.compile(optimizer="adam", loss=classic.loss_for(output), metrics=["accuracy"])
    x = np.random.default_rng(5).uniform(-0.1, 1.175, (4, 32, 32, 1)).astype("float32")
    model.train_on_batch(x, np.arange(4))
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.count_params() == model.count_params()
    assert loaded.evaluate(x, np.arange(4), verbose=0) == pytest.approx(model.evaluate(x, np.arange(4), verbose=0))


def test_softmax_option_replaces_the_rbf_by_a_dense_softmax():
    model = classic.build_lenet5_classic(seed=0, output="softmax")
    out = model.get_layer("output")
    assert isinstance(out, keras.layers.Dense) and out.count_params() == 850
    assert model.count_params() == 60_850
    p = model.predict(np.zeros((2, 32, 32, 1), "float32"), verbose=0)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)


def test_adapts_to_gtsrb_colour_images_and_43_classes():
    model = classic.build_lenet5_classic((32, 32, 3), 43, seed=0)
    assert model.get_layer("c1").count_params() == 5 * 5 * 3 * 6 + 6
    assert model.output_shape == (None, 43)
    # stand-in prototypes: distinct +-1 codes, far apart
    codes = keras.ops.convert_to_numpy(model.get_layer("output").prototypes)
    assert codes.shape == (43, 84) and set(np.unique(codes)) == {-1.0, 1.0}
    hamming = (codes[:, None, :] != codes[None, :, :]).sum(-1)
    assert hamming[~np.eye(43, dtype=bool)].min() >= 20
    np.testing.assert_array_equal(codes, classic.make_prototypes(43))  # deterministic


@pytest.mark.parametrize("shape", [(28, 28, 1), (34, 34, 1), (32, 30, 1)])
def test_rejects_inputs_the_layer_arithmetic_does_not_fit(shape):
    with pytest.raises(ValueError, match="LeNet-5 cannot take"):
        classic.build_lenet5_classic(shape)
