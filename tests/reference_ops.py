"""Vectorized NumPy reference for 2-D convolution and pooling (forward and backward).

Why this module exists
----------------------
* Teaching reference: the pipeline trains LeNet-5 style CNNs with Keras, whose
  kernels are opaque. These functions spell out the same maths in a few lines of
  NumPy (im2col through ``sliding_window_view`` + ``tensordot``) so the forward
  pass and the gradients can be read, stepped through and reasoned about.
* Verification: the test-suite checks them against TensorFlow (``tf.nn.conv2d``,
  ``tf.nn.max_pool2d``, ``tf.nn.avg_pool2d`` and their ``GradientTape``
  gradients) and then uses them to check the Keras layers of the project's
  models with the layers' own weights.

Conventions (identical to TensorFlow / Keras, ``data_format="channels_last"``)
------------------------------------------------------------------------------
* Arrays are NHWC: ``A_prev`` is ``(m, h, w, c)``; kernels are
  ``(kh, kw, c_prev, c_new)``; biases are ``(1, 1, 1, c_new)`` (a flat
  ``(c_new,)`` bias, as stored by Keras, is accepted too).
* The operation is cross-correlation (no kernel flip), like every DL framework.
* ``padding="same"`` reproduces TensorFlow's SAME rule exactly: the output size
  is ``ceil(n / s)`` and the total padding ``max((out - 1) * s + k - n, 0)`` is
  split with the *extra* row/column at the bottom/right. ``"valid"`` means no
  padding; an explicit ``(ph, pw)`` pads ``ph`` rows top and bottom and ``pw``
  columns left and right.
* Pooling uses valid padding (no padding), as ``keras.layers.MaxPooling2D``
  does by default.

Only loops over the ``kh * kw`` kernel offsets are used (in the backward
passes, to scatter-add window gradients); nothing loops over images or pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "conv_forward",
    "conv_backward",
    "pool_forward",
    "pool_backward",
    "same_padding",
]

Padding = str | Sequence[int]
Activation = Callable[[np.ndarray], np.ndarray] | str | None
PoolMode = Literal["max", "avg"]

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
}


# --------------------------------------------------------------------------- #
# argument checking
# --------------------------------------------------------------------------- #
def _as_float(x: np.ndarray, name: str, ndim: int) -> np.ndarray:
    """Return ``x`` as a floating array, raising ValueError if its rank is wrong."""
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {arr.shape} (ndim={arr.ndim})")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _pair(value: int | Sequence[int], name: str, minimum: int) -> tuple[int, int]:
    """Normalise an int or a 2-sequence of ints (>= minimum) into a tuple."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = value  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum for v in (a, b)):
        raise ValueError(f"{name} must contain ints >= {minimum}, got {value!r}")
    return int(a), int(b)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TF's SAME rule; the odd extra goes *after*."""
    out = -(-size // stride)  # ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _resolve_padding(
    padding: Padding, h: int, w: int, kh: int, kw: int, sh: int, sw: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Turn the ``padding`` argument into ((top, bottom), (left, right))."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "same":
            return same_padding(h, kh, sh), same_padding(w, kw, sw)
        if mode == "valid":
            return (0, 0), (0, 0)
        raise ValueError(f"padding must be 'same', 'valid' or a (ph, pw) tuple of ints >= 0, got {padding!r}")
    ph, pw = _pair(padding, "padding", minimum=0)
    return (ph, ph), (pw, pw)


def _resolve_activation(activation: Activation) -> Callable[[np.ndarray], np.ndarray]:
    if activation is None:
        return _ACTIVATIONS["linear"]
    if isinstance(activation, str):
        try:
            return _ACTIVATIONS[activation.lower()]
        except KeyError:
            raise ValueError(
                f"activation must be a callable, None or one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            ) from None
    if callable(activation):
        return activation
    raise ValueError(f"activation must be a callable, None or one of {sorted(_ACTIVATIONS)}, got {activation!r}")


def _check_conv_args(
    A_prev: np.ndarray, W: np.ndarray, b: np.ndarray, padding: Padding, stride
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple, tuple[int, int]]:
    """Validate conv inputs; return arrays, ((pt, pb), (pl, pr)) and the stride."""
    A_prev = _as_float(A_prev, "A_prev", 4)
    W = _as_float(W, "W", 4)
    b = np.asarray(b)
    _, h, w, c_prev = A_prev.shape
    kh, kw, c_in, c_new = W.shape
    if c_in != c_prev:
        raise ValueError(
            f"W must have shape (kh, kw, c_prev={c_prev}, c_new) to match A_prev {A_prev.shape}, got {W.shape}"
        )
    if b.shape not in ((1, 1, 1, c_new), (c_new,)):
        raise ValueError(f"b must have shape (1, 1, 1, {c_new}) (or ({c_new},)) to match W {W.shape}, got {b.shape}")
    if kh == 0 or kw == 0:
        raise ValueError(f"W must have a non-empty kernel, got shape {W.shape}")
    sh, sw = _pair(stride, "stride", minimum=1)
    pads = _resolve_padding(padding, h, w, kh, kw, sh, sw)
    hp, wp = h + sum(pads[0]), w + sum(pads[1])
    if kh > hp or kw > wp:
        raise ValueError(
            f"kernel {(kh, kw)} is larger than the padded input {(hp, wp)} "
            f"(A_prev shape {A_prev.shape}, padding={padding!r})"
        )
    return A_prev, W, b.reshape(1, 1, 1, c_new), pads, (sh, sw)


def _windows(A: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> np.ndarray:
    """Strided view of every (kh, kw) window: shape (m, oh, ow, c, kh, kw), no copy."""
    return sliding_window_view(A, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]


def _pad(A: np.ndarray, pads: tuple) -> np.ndarray:
    if pads == ((0, 0), (0, 0)):
        return A
    return np.pad(A, ((0, 0), pads[0], pads[1], (0, 0)))


# --------------------------------------------------------------------------- #
# convolution
# --------------------------------------------------------------------------- #
def conv_forward(
    A_prev: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    activation: Activation,
    padding: Padding = "same",
    stride: int | tuple[int, int] = (1, 1),
) -> np.ndarray:
    """Forward pass of a 2-D convolution layer: ``activation(A_prev * W + b)``.

    Same maths as ``keras.layers.Conv2D`` / ``tf.nn.conv2d`` so their outputs can
    be checked element by element. im2col is a strided view (no copy) that
    ``tensordot`` contracts with the kernel in one BLAS call.

    Args:
        A_prev: (m, h, w, c_prev) input.
        W: (kh, kw, c_prev, c_new) kernels.
        b: (1, 1, 1, c_new) biases (a flat (c_new,) bias is accepted).
        activation: callable applied to Z, or None / "linear" / "relu" /
            "tanh" / "sigmoid".
        padding: "same" (TensorFlow rule, extra padding bottom/right), "valid",
            or an explicit symmetric (ph, pw).
        stride: (sh, sw) or an int.

    Returns:
        (m, h_new, w_new, c_new) activated output.
    """
    act = _resolve_activation(activation)
    A_prev, W, b, pads, (sh, sw) = _check_conv_args(A_prev, W, b, padding, stride)
    kh, kw = W.shape[:2]
    cols = _windows(_pad(A_prev, pads), kh, kw, sh, sw)  # (m, oh, ow, c, kh, kw)
    Z = np.tensordot(cols, W, axes=([3, 4, 5], [2, 0, 1])) + b
    return act(Z)


def conv_backward(
    dZ: np.ndarray,
    A_prev: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    padding: Padding = "same",
    stride: int | tuple[int, int] = (1, 1),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of a 2-D convolution, given dZ = dLoss/dZ (pre-activation).

    dW correlates the input windows with dZ; dA_prev scatters ``dZ @ W[i, j].T``
    back to every input pixel that window offset (i, j) touched - one
    vectorized add per kernel offset - and then crops the padding off.

    Args:
        dZ: (m, h_new, w_new, c_new) gradient w.r.t. the unactivated output.
        A_prev, W, b, padding, stride: as given to :func:`conv_forward`.

    Returns:
        (dA_prev, dW, db) with the shapes of A_prev, W and (1, 1, 1, c_new).
    """
    A_prev, W, _, pads, (sh, sw) = _check_conv_args(A_prev, W, b, padding, stride)
    m, h, w, _ = A_prev.shape
    kh, kw, _, c_new = W.shape
    A_pad = _pad(A_prev, pads)
    hp, wp = A_pad.shape[1:3]
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    dZ = np.asarray(dZ)
    if dZ.shape != (m, oh, ow, c_new):
        raise ValueError(
            f"dZ must have shape {(m, oh, ow, c_new)} (the conv output for A_prev "
            f"{A_prev.shape}, W {W.shape}, padding={padding!r}, "
            f"stride={(sh, sw)}), got {dZ.shape}"
        )
    dtype = np.result_type(dZ, A_prev, W)

    db = dZ.sum(axis=(0, 1, 2), dtype=dtype).reshape(1, 1, 1, c_new)
    cols = _windows(A_pad, kh, kw, sh, sw)  # (m, oh, ow, c, kh, kw)
    dW = np.tensordot(cols, dZ, axes=([0, 1, 2], [0, 1, 2])).transpose(1, 2, 0, 3)

    dA_pad = np.zeros((m, hp, wp, A_prev.shape[3]), dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            dA_pad[:, i : i + sh * oh : sh, j : j + sw * ow : sw, :] += dZ @ W[i, j].T
    (pt, _), (pl, _) = pads
    dA_prev = dA_pad[:, pt : pt + h, pl : pl + w, :]
    return np.ascontiguousarray(dA_prev), dW.astype(dtype, copy=False), db


# --------------------------------------------------------------------------- #
# pooling
# --------------------------------------------------------------------------- #
def _check_pool_args(
    A_prev: np.ndarray, kernel_shape, stride, mode: str
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int], str]:
    A_prev = _as_float(A_prev, "A_prev", 4)
    kh, kw = _pair(kernel_shape, "kernel_shape", minimum=1)
    sh, sw = _pair(stride, "stride", minimum=1)
    if mode not in ("max", "avg"):
        raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
    if kh > A_prev.shape[1] or kw > A_prev.shape[2]:
        raise ValueError(
            f"kernel_shape {(kh, kw)} is larger than the input {A_prev.shape[1:3]} "
            f"(A_prev shape {A_prev.shape}); pooling uses valid padding"
        )
    return A_prev, (kh, kw), (sh, sw), mode


def pool_forward(
    A_prev: np.ndarray,
    kernel_shape: int | tuple[int, int],
    stride: int | tuple[int, int] = (1, 1),
    mode: PoolMode = "max",
) -> np.ndarray:
    """Max or average pooling with valid padding (like ``keras.layers.MaxPooling2D``).

    Args:
        A_prev: (m, h, w, c) input.
        kernel_shape: (kh, kw) or an int.
        stride: (sh, sw) or an int.
        mode: "max" or "avg".

    Returns:
        (m, (h - kh) // sh + 1, (w - kw) // sw + 1, c) pooled output.
    """
    A_prev, (kh, kw), (sh, sw), mode = _check_pool_args(A_prev, kernel_shape, stride, mode)
    win = _windows(A_prev, kh, kw, sh, sw)  # (m, oh, ow, c, kh, kw)
    return win.max(axis=(4, 5)) if mode == "max" else win.mean(axis=(4, 5))


def pool_backward(
    dA: np.ndarray,
    A_prev: np.ndarray,
    kernel_shape: int | tuple[int, int],
    stride: int | tuple[int, int] = (1, 1),
    mode: PoolMode = "max",
) -> np.ndarray:
    """Backward pass of :func:`pool_forward`.

    * ``"avg"``: each window's gradient is spread evenly, ``dA / (kh * kw)``.
    * ``"max"``: each window's gradient goes to **one** input only. With ties
      (several equal maxima in a window) it goes to the *first* maximum in
      row-major window order (top row first, left to right) - ``argmax`` of the
      flattened window. This is what TensorFlow's ``MaxPoolGrad`` does on CPU,
      so gradients match TF exactly even on constant regions (e.g. ReLU zeros).
    Overlapping windows (stride < kernel) accumulate their contributions.

    Args:
        dA: (m, h_new, w_new, c) gradient w.r.t. the pooled output.
        A_prev, kernel_shape, stride, mode: as given to :func:`pool_forward`.

    Returns:
        dA_prev, shape of A_prev.
    """
    A_prev, (kh, kw), (sh, sw), mode = _check_pool_args(A_prev, kernel_shape, stride, mode)
    m, h, w, c = A_prev.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    dA = np.asarray(dA)
    if dA.shape != (m, oh, ow, c):
        raise ValueError(
            f"dA must have shape {(m, oh, ow, c)} (the pool output for A_prev "
            f"{A_prev.shape}, kernel_shape={(kh, kw)}, stride={(sh, sw)}), "
            f"got {dA.shape}"
        )
    dA_prev = np.zeros(A_prev.shape, dtype=np.result_type(dA, A_prev))
    if mode == "max":
        win = _windows(A_prev, kh, kw, sh, sw).reshape(m, oh, ow, c, kh * kw)
        first_max = win.argmax(axis=-1)  # argmax returns the first occurrence
    for i in range(kh):
        for j in range(kw):
            if mode == "max":
                grad = np.where(first_max == i * kw + j, dA, 0)
            else:
                grad = dA / (kh * kw)
            dA_prev[:, i : i + sh * oh : sh, j : j + sw * ow : sw, :] += grad
    return dA_prev
