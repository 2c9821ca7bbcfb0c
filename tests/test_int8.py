"""Full-integer post-training quantization of a small trained model, run by LiteRT, against its float model."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analysis import stats
from pipeline.portable.int8 import Int8Model
from pipeline.training import quantize
from tests.conftest import learnable_digits


@pytest.fixture(scope="module")
def trained() -> tuple[object, np.ndarray, np.ndarray, np.ndarray]:
    """A small CNN trained a few epochs on learnable digits: (model, train images, test images, test labels)."""
    import keras

    x, y = learnable_digits(1200, seed=3)
    x = (x.astype("float32") / 255.0)[..., None]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(x.shape[1:]),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:1000], y[:1000], epochs=4, batch_size=32, verbose=0)
    return model, x[:1000], x[1000:], y[1000:]


def test_the_int8_model_keeps_the_float_models_accuracy_and_its_size_shrinks(trained) -> None:
    model, x_train, x_test, y_test = trained
    content = quantize.to_int8(model, quantize.representative_sample(x_train, seed=0, count=100))
    int8 = Int8Model(content)
    assert int8.input["dtype"] == np.int8 and int8.output["dtype"] == np.int8  # full integer, input and output
    assert int8.size_bytes < model.count_params() * 4 / 2  # int8 weights: about a quarter of float32's
    float_probabilities = model.predict(x_test, verbose=0)
    int8_probabilities = int8.predict(x_test, batch_size=64)
    assert int8_probabilities.shape == float_probabilities.shape
    np.testing.assert_allclose(int8_probabilities, float_probabilities, atol=0.05)  # one int8 step is 1/256
    float_right = float_probabilities.argmax(axis=1) == y_test
    int8_right = int8_probabilities.argmax(axis=1) == y_test
    assert float_right.mean() > 0.8  # the model learned something worth quantizing
    assert (int8_probabilities.argmax(axis=1) == float_probabilities.argmax(axis=1)).mean() >= 0.97
    p = stats.mcnemar_exact(*stats.discordant(int8_right, float_right))
    assert p >= 0.05, "int8 differs significantly from float on a model this small"
    p50, p95 = int8.latency_ms(x_test[0])
    assert 0 < p50 <= p95
    assert np.array_equal(int8.predict(x_test[:5], batch_size=1), int8.predict(x_test[:5], batch_size=5))


def test_the_representative_images_are_a_seeded_sample_of_the_training_split() -> None:
    x = np.arange(1000)[:, None]
    first, again = quantize.representative_sample(x, 7, 50), quantize.representative_sample(x, 7, 50)
    assert np.array_equal(first, again) and len(np.unique(first)) == 50
    assert not np.array_equal(first, quantize.representative_sample(x, 8, 50))


def test_lenet5_classics_float64_rbf_output_is_not_quantizable_and_says_why(capfd: pytest.CaptureFixture) -> None:
    from pipeline.portable.lenet5_classic import build_lenet5_classic

    model = build_lenet5_classic((32, 32, 1), 10, output="rbf", seed=0)
    capfd.readouterr()
    with pytest.raises(quantize.NotQuantizable, match=r"TFLite has no int8 kernel for .*Square.*\(computed in f64\)"):
        quantize.to_int8(model, np.zeros((4, 32, 32, 1), np.float32))
    printed = capfd.readouterr()
    assert "error:" not in printed.err and "Saved artifact" not in printed.out  # MLIR's log, the export's listing


def test_the_frozen_graph_conversion_gives_the_int8_model_tflites_keras_path_gives(trained) -> None:
    """to_int8 converts the graph with its weights frozen, skipping the SavedModel export of
    `from_keras_model`: the int8 model must compute exactly what that path's does."""
    import tensorflow as tf

    model, x_train, x_test, _ = trained
    representative = quantize.representative_sample(x_train, seed=0, count=50)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    keras_path = Int8Model(converter.convert())
    frozen = Int8Model(quantize.to_int8(model, representative))
    assert frozen.input["quantization"] == keras_path.input["quantization"]
    assert frozen.output["quantization"] == keras_path.output["quantization"]
    np.testing.assert_array_equal(frozen.predict(x_test), keras_path.predict(x_test))
