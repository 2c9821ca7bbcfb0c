"""Check the NumPy reference ops (tests.reference_ops) against TensorFlow.

Forward and backward passes of convolution and pooling are compared with
``tf.nn.conv2d`` / ``tf.nn.max_pool2d`` / ``tf.nn.avg_pool2d`` and their
``tf.GradientTape`` gradients on random float64 inputs, then the reference is
used to check the first block of LeNet-5 (modern) as built by Keras.
Run with ``-s`` to print the largest difference seen for each op.
"""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline.designs.keras_build import build_model  # noqa: E402
from pipeline.designs.language import parse_design  # noqa: E402
from tests.reference_ops import (  # noqa: E402
    conv_backward,
    conv_forward,
    pool_backward,
    pool_forward,
    same_padding,
)

TOL = 1e-5
TOL_FLOAT32 = 1e-4
MAX_DIFF: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_max_diffs():
    """Print the largest |ours - TF| per op at the end (visible with ``pytest -s``)."""
    yield
    if MAX_DIFF:
        print("\nmax abs difference vs TensorFlow:")
        for name, diff in sorted(MAX_DIFF.items()):
            print(f"  {name:<28s} {diff:.3e}")


def assert_close(name: str, ours: np.ndarray, theirs, tol: float = TOL) -> None:
    theirs = np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} != {theirs.shape}"
    diff = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
    MAX_DIFF[name] = max(MAX_DIFF.get(name, 0.0), diff)
    assert diff <= tol, f"{name}: max abs difference {diff:.3e} > {tol:.0e}"


def tf_padding(padding):
    if isinstance(padding, str):
        return padding.upper()
    ph, pw = padding
    return [[0, 0], [ph, ph], [pw, pw], [0, 0]]


def _tensor(x):
    # Always hand TF explicit tensors: tf.nn.max_pool2d given a float64 *NumPy*
    # array with stride != 1 silently computes in float32 (seen with TF 2.21).
    return x if isinstance(x, tf.Tensor) else tf.constant(x)


def tf_conv(A, W, b, padding, stride):
    A, W, b = _tensor(A), _tensor(W), _tensor(b)
    Z = tf.nn.conv2d(A, W, strides=[1, *stride, 1], padding=tf_padding(padding)) + b
    assert Z.dtype == A.dtype
    return Z


def tf_pool(A, kernel, stride, mode):
    A = _tensor(A)
    fn = tf.nn.max_pool2d if mode == "max" else tf.nn.avg_pool2d
    P = fn(A, ksize=list(kernel), strides=list(stride), padding="VALID")
    assert P.dtype == A.dtype
    return P


# --------------------------------------------------------------------------- #
# convolution vs TF
# --------------------------------------------------------------------------- #
IMAGE_SIZES = [(7, 9), (8, 6)]  # odd and even, non-square
CONV_CASES = list(
    itertools.product(
        IMAGE_SIZES,
        [(3, 3), (2, 2), (5, 5), (2, 3)],  # kernels
        [(1, 1), (2, 2), (1, 2)],  # strides
        ["same", "valid", (1, 2)],  # paddings
    )
)


def _conv_inputs(hw, kernel, seed=0, m=3, c_prev=2, c_new=4):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, *hw, c_prev))
    W = rng.standard_normal((*kernel, c_prev, c_new))
    b = rng.standard_normal((1, 1, 1, c_new))
    return rng, A, W, b


@pytest.mark.parametrize("hw, kernel, stride, padding", CONV_CASES)
def test_conv_forward_matches_tf(hw, kernel, stride, padding):
    _, A, W, b = _conv_inputs(hw, kernel)
    ours = conv_forward(A, W, b, None, padding=padding, stride=stride)
    assert_close("conv_forward", ours, tf_conv(A, W, b, padding, stride))


@pytest.mark.parametrize("hw, kernel, stride, padding", CONV_CASES)
def test_conv_backward_matches_tf(hw, kernel, stride, padding):
    rng, A, W, b = _conv_inputs(hw, kernel)
    A_t, W_t, b_t = (tf.constant(x) for x in (A, W, b))
    with tf.GradientTape() as tape:
        tape.watch([A_t, W_t, b_t])
        Z = tf_conv(A_t, W_t, b_t, padding, stride)
    dZ = rng.standard_normal(Z.shape)
    dA_tf, dW_tf, db_tf = tape.gradient(Z, [A_t, W_t, b_t], output_gradients=tf.constant(dZ))

    dA, dW, db = conv_backward(dZ, A, W, b, padding=padding, stride=stride)
    assert_close("conv_backward dA_prev", dA, dA_tf)
    assert_close("conv_backward dW", dW, dW_tf)
    assert_close("conv_backward db", db, db_tf)


@pytest.mark.parametrize(
    "activation, tf_fn",
    [
        (None, tf.identity),
        ("linear", tf.identity),
        ("relu", tf.nn.relu),
        ("tanh", tf.tanh),
        ("sigmoid", tf.sigmoid),
        (np.tanh, tf.tanh),  # any callable
    ],
)
def test_conv_forward_activation(activation, tf_fn):
    _, A, W, b = _conv_inputs((7, 9), (3, 3))
    ours = conv_forward(A, W, b, activation, padding="same", stride=(2, 2))
    assert_close("conv_forward", ours, tf_fn(tf_conv(A, W, b, "same", (2, 2))))


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [
        (7, 2, 1, (0, 1)),  # even kernel: extra row at the bottom
        (8, 5, 2, (1, 2)),  # stride 2: odd total, extra after
        (9, 5, 2, (2, 2)),
        (8, 2, 2, (0, 0)),
        (3, 5, 1, (2, 2)),
    ],
)
def test_same_padding_is_tf_rule(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_conv_accepts_flat_keras_bias():
    _, A, W, b = _conv_inputs((7, 9), (3, 3))
    np.testing.assert_array_equal(conv_forward(A, W, b.ravel(), None), conv_forward(A, W, b, None))


# --------------------------------------------------------------------------- #
# pooling vs TF
# --------------------------------------------------------------------------- #
POOL_CASES = list(
    itertools.product(
        IMAGE_SIZES,
        [(2, 2), (3, 3), (2, 3)],  # kernels
        [(1, 1), (2, 2), (2, 1)],  # strides (1 = overlapping windows)
        ["max", "avg"],
    )
)


@pytest.mark.parametrize("hw, kernel, stride, mode", POOL_CASES)
def test_pool_forward_matches_tf(hw, kernel, stride, mode):
    A = np.random.default_rng(1).standard_normal((3, *hw, 2))
    ours = pool_forward(A, kernel, stride=stride, mode=mode)
    assert_close(f"pool_forward {mode}", ours, tf_pool(A, kernel, stride, mode))


@pytest.mark.parametrize("hw, kernel, stride, mode", POOL_CASES)
def test_pool_backward_matches_tf(hw, kernel, stride, mode):
    rng = np.random.default_rng(2)
    A = rng.standard_normal((3, *hw, 2))
    A_t = tf.constant(A)
    with tf.GradientTape() as tape:
        tape.watch(A_t)
        P = tf_pool(A_t, kernel, stride, mode)
    dA = rng.standard_normal(P.shape)
    dA_prev_tf = tape.gradient(P, A_t, output_gradients=tf.constant(dA))

    ours = pool_backward(dA, A, kernel, stride=stride, mode=mode)
    assert_close(f"pool_backward {mode}", ours, dA_prev_tf)


# Max-pool ties: the gradient goes to the FIRST maximum in row-major window order.
TIE_INPUT = np.array(
    [
        [1, 3, 3, 0],  # top-left window: 3 at (0,1) and (1,0) -> (0,1) wins
        [3, 2, 1, 3],  # top-right window: 3 at (0,2) and (1,3) -> (0,2) wins
        [0, 0, 5, 5],  # bottom-right window: all 5 -> (2,2) wins
        [0, 1, 5, 5],
    ],
    dtype=np.float64,
).reshape(1, 4, 4, 1)

TIE_CASES = [
    # (input, kernel, stride, upstream dA, expected dA_prev)
    (
        TIE_INPUT,
        (2, 2),
        (2, 2),
        np.array([[1.0, 2.0], [3.0, 4.0]]),
        np.array([[0, 1, 2, 0], [0, 0, 0, 0], [0, 0, 4, 0], [0, 3, 0, 0]]),
    ),
    (  # overlapping windows accumulate on the shared first maximum
        TIE_INPUT,
        (2, 2),
        (1, 1),
        np.ones((3, 3)),
        np.array([[0, 2, 1, 0], [1, 0, 0, 0], [0, 0, 4, 0], [0, 1, 0, 0]]),
    ),
    (  # constant windows (e.g. dead ReLU zeros): top-left element gets it all
        np.zeros((1, 4, 4, 1)),
        (2, 2),
        (2, 2),
        np.array([[1.0, 2.0], [3.0, 4.0]]),
        np.array([[1, 0, 2, 0], [0, 0, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0]]),
    ),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("A, kernel, stride, dA, expected", TIE_CASES)
def test_max_pool_tie_breaking_first_max_row_major(A, kernel, stride, dA, expected, dtype):
    A = A.astype(dtype)
    dA = dA.reshape(1, *dA.shape, 1).astype(dtype)
    ours = pool_backward(dA, A, kernel, stride=stride, mode="max")
    np.testing.assert_array_equal(ours[0, :, :, 0], expected)

    A_t = tf.constant(A)
    with tf.GradientTape() as tape:
        tape.watch(A_t)
        P = tf_pool(A_t, kernel, stride, "max")
    np.testing.assert_array_equal(ours, tape.gradient(P, A_t, output_gradients=dA))


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #
A0 = np.zeros((3, 7, 9, 2))
W0 = np.zeros((3, 3, 2, 4))
B0 = np.zeros((1, 1, 1, 4))


def _case(id_, fn, *args, match, **kwargs):
    return pytest.param(fn, args, kwargs, match, id=id_)


@pytest.mark.parametrize(
    "fn, args, kwargs, match",
    [
        _case(
            "A_prev-rank", conv_forward, A0[0], W0, B0, None, match=r"A_prev must be a 4-D array, got shape \(7, 9, 2\)"
        ),
        _case(
            "W-channels",
            conv_forward,
            A0,
            W0[..., :1, :],
            B0,
            None,
            match=r"W must have shape \(kh, kw, c_prev=2, c_new\).*got \(3, 3, 1, 4\)",
        ),
        _case(
            "b-shape",
            conv_forward,
            A0,
            W0,
            np.zeros((1, 1, 1, 3)),
            None,
            match=r"b must have shape \(1, 1, 1, 4\).*got \(1, 1, 1, 3\)",
        ),
        _case(
            "padding-name",
            conv_forward,
            A0,
            W0,
            B0,
            None,
            padding="full",
            match=r"padding must be 'same', 'valid' or a \(ph, pw\).*got 'full'",
        ),
        _case(
            "padding-negative",
            conv_forward,
            A0,
            W0,
            B0,
            None,
            padding=(1, -1),
            match=r"padding must contain ints >= 0, got \(1, -1\)",
        ),
        _case(
            "stride-zero",
            conv_forward,
            A0,
            W0,
            B0,
            None,
            stride=(0, 1),
            match=r"stride must contain ints >= 1, got \(0, 1\)",
        ),
        _case("activation-name", conv_forward, A0, W0, B0, "swish", match=r"activation must be .*got 'swish'"),
        _case(
            "kernel-too-big",
            conv_forward,
            A0,
            np.zeros((9, 3, 2, 4)),
            B0,
            None,
            padding="valid",
            match=r"kernel \(9, 3\) is larger than the padded input \(7, 9\)",
        ),
        _case(
            "dZ-shape",
            conv_backward,
            np.zeros((3, 7, 8, 4)),
            A0,
            W0,
            B0,
            match=r"dZ must have shape \(3, 7, 9, 4\).*got \(3, 7, 8, 4\)",
        ),
        _case(
            "backward-padding",
            conv_backward,
            np.zeros((3, 4, 5, 4)),
            A0,
            W0,
            B0,
            padding="bogus",
            match=r"padding must be .*got 'bogus'",
        ),
        _case("pool-mode", pool_forward, A0, (2, 2), mode="min", match=r"mode must be 'max' or 'avg', got 'min'"),
        _case(
            "pool-kernel-rank",
            pool_forward,
            A0,
            (2, 2, 2),
            match=r"kernel_shape must be an int or a pair of ints, got \(2, 2, 2\)",
        ),
        _case(
            "pool-kernel-too-big",
            pool_forward,
            A0,
            (8, 2),
            match=r"kernel_shape \(8, 2\) is larger than the input \(7, 9\)",
        ),
        _case(
            "pool-backward-mode",
            pool_backward,
            np.zeros((3, 3, 4, 2)),
            A0,
            (2, 2),
            (2, 2),
            mode="median",
            match=r"mode must be 'max' or 'avg', got 'median'",
        ),
        _case(
            "dA-shape",
            pool_backward,
            np.zeros((3, 3, 3, 2)),
            A0,
            (2, 2),
            (2, 2),
            match=r"dA must have shape \(3, 3, 4, 2\).*got \(3, 3, 3, 2\)",
        ),
    ],
)
def test_errors_name_argument_and_shapes(fn, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


# --------------------------------------------------------------------------- #
# the first block of LeNet-5 (modern), built by Keras
# --------------------------------------------------------------------------- #
def lenet5_modern_first_block() -> keras.Model:
    """The first two layers (Conv2D 6@5x5 same ReLU -> MaxPooling2D 2x2) of lenet5_modern
    on a 32x32x1 input, as the pipeline builds them (pipeline.designs.keras_build.build_model)."""
    design = parse_design("lenet5_modern", {"builtin": "lenet5_modern"}, "models.lenet5_modern")
    model = build_model(design, (32, 32, 1), num_classes=10, seed=0)
    conv, pool = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)][:2]
    assert isinstance(conv, keras.layers.Conv2D) and isinstance(pool, keras.layers.MaxPooling2D)
    return keras.Model(model.inputs, pool.output, name="lenet5_modern_first_block")


def _first_conv_and_pool(model: keras.Model):
    layers = model.layers
    i = next(k for k, layer in enumerate(layers) if isinstance(layer, keras.layers.Conv2D))
    conv, pool = layers[i], layers[i + 1]
    assert isinstance(pool, keras.layers.MaxPooling2D), f"expected MaxPooling2D after {conv.name}"
    return conv, pool


def test_keras_lenet5_first_block_matches_reference():
    keras.utils.set_random_seed(0)
    conv, pool = _first_conv_and_pool(lenet5_modern_first_block())
    rng = np.random.default_rng(3)
    conv.bias.assign(rng.normal(0.0, 0.1, size=conv.bias.shape).astype("float32"))
    x = rng.random((4, 32, 32, 1)).astype("float32")  # MNIST-like pixels in [0, 1]
    W = np.asarray(conv.kernel.numpy(), dtype=np.float64)
    b = np.asarray(conv.bias.numpy(), dtype=np.float64).reshape(1, 1, 1, -1)
    activation = keras.activations.serialize(conv.activation)
    activation = activation if isinstance(activation, str) else activation["config"]
    stride = tuple(conv.strides)
    pool_kernel, pool_stride = tuple(pool.pool_size), tuple(pool.strides)
    assert pool.padding == "valid"

    # forward: each layer, from the same input, with the layer's own weights
    x_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        a1_keras = conv(x_t)
        p_keras = pool(a1_keras)
    a1 = conv_forward(x.astype(np.float64), W, b, activation, padding=conv.padding, stride=stride)
    assert_close("keras Conv2D (float32)", a1, a1_keras, TOL_FLOAT32)
    a1_k = np.asarray(a1_keras, dtype=np.float64)  # pool Keras's own activations
    p = pool_forward(a1_k, pool_kernel, pool_stride, mode="max")
    assert_close("keras MaxPooling2D (float32)", p, p_keras, TOL_FLOAT32)
    assert_close(
        "keras block end-to-end (f32)",
        pool_forward(a1, pool_kernel, pool_stride, mode="max"),
        p_keras,
        TOL_FLOAT32,
    )

    # backward through the block: pool -> relu -> conv
    g = rng.standard_normal(p.shape)
    dx_k, dW_k, db_k = tape.gradient(
        p_keras, [x_t, conv.kernel, conv.bias], output_gradients=tf.constant(g, tf.float32)
    )
    da1 = pool_backward(g, a1_k, pool_kernel, pool_stride, mode="max")
    dz = da1 * (a1_k > 0)  # relu'(z)
    dx, dW, db = conv_backward(dz, x.astype(np.float64), W, b, padding=conv.padding, stride=stride)
    scale = max(1.0, float(np.max(np.abs(dW))))  # dW sums 4*32*32 float32 products
    assert_close("keras block grad dx (f32)", dx, dx_k, TOL_FLOAT32)
    assert_close("keras block grad dW (f32, rel)", dW / scale, np.asarray(dW_k) / scale, TOL_FLOAT32)
    assert_close("keras block grad db (f32, rel)", db.ravel() / scale, np.asarray(db_k) / scale, TOL_FLOAT32)
