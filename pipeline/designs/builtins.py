"""The built-in designs, written in the layer language.

LeNet-5 classic has layers of its own: pipeline/portable/lenet5_classic.py.
"""

from __future__ import annotations

from typing import Any


def _conv(filters: int, kernel: int, **options: Any) -> dict[str, Any]:
    return {"type": "conv", "filters": filters, "kernel": kernel, **options}


def _dense(units: int | str, **options: Any) -> dict[str, Any]:
    return {"type": "dense", "units": units, **options}


_RELU_HE = {"activation": "relu", "initializer": "he_normal"}
_SOFTMAX = _dense("classes", activation="softmax")

# Built-in designs in the layer language (lenet5_classic needs layers of its own: see
# pipeline/portable/lenet5_classic.py). Each adapts to the dataset's input shape and class count.
BUILTINS: dict[str, list[dict[str, Any]] | None] = {
    # LeNet-5 as courses teach it today: ReLU, max-pooling, He init (Adam is in train:).
    "lenet5_modern": [
        _conv(6, 5, padding="same", **_RELU_HE),
        {"type": "maxpool", "pool": 2, "strides": 2},
        _conv(16, 5, padding="valid", **_RELU_HE),
        {"type": "maxpool", "pool": 2, "strides": 2},
        {"type": "flatten"},
        _dense(120, **_RELU_HE),
        _dense(84, **_RELU_HE),
        _SOFTMAX,
    ],
    # Dive into Deep Learning's LeNet: sigmoid, average pooling, padding 2 on 28x28 input.
    "lenet5_d2l": [
        _conv(6, 5, padding="same", activation="sigmoid"),
        {"type": "avgpool", "pool": 2, "strides": 2},
        _conv(16, 5, activation="sigmoid"),
        {"type": "avgpool", "pool": 2, "strides": 2},
        {"type": "flatten"},
        _dense(120, activation="sigmoid"),
        _dense(84, activation="sigmoid"),
        _SOFTMAX,
    ],
    # The course primer's small CNN.
    "cnn_primer": [
        _conv(64, 2, padding="same", activation="relu"),
        {"type": "maxpool", "pool": 2},
        _conv(32, 2, padding="same", activation="relu"),
        {"type": "maxpool", "pool": 2},
        {"type": "dropout", "rate": 0.3},
        {"type": "flatten"},
        _dense(256, activation="relu"),
        {"type": "dropout", "rate": 0.5},
        _SOFTMAX,
    ],
    # Hands-On Machine Learning's Fashion-MNIST CNN (chapter 14).
    "cnn_homl": [
        _conv(64, 7, padding="same", **_RELU_HE),
        {"type": "maxpool", "pool": 2},
        _conv(128, 3, padding="same", **_RELU_HE),
        _conv(128, 3, padding="same", **_RELU_HE),
        {"type": "maxpool", "pool": 2},
        _conv(256, 3, padding="same", **_RELU_HE),
        _conv(256, 3, padding="same", **_RELU_HE),
        {"type": "maxpool", "pool": 2},
        {"type": "flatten"},
        _dense(128, **_RELU_HE),
        {"type": "dropout", "rate": 0.5},
        _dense(64, **_RELU_HE),
        {"type": "dropout", "rate": 0.5},
        _SOFTMAX,
    ],
    # LeCun et al. 1998, faithfully: scaled tanh, trainable subsampling, C3 table, RBF output.
    "lenet5_classic": None,
}
