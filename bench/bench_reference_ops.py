"""Benchmark: vectorized reference ops vs naive per-pixel loops.

Why: ``tests.reference_ops`` claims to be fast enough to check real batches;
this measures how much the im2col/``sliding_window_view`` formulation buys over
the textbook loops (one Python iteration per image, output row and column; each
iteration is itself vectorized over channels and the kernel window) on the
LeNet-5 first block: a 64x28x28x1 batch, conv 6@5x5 "same" + ReLU, then max
pool 2x2 stride 2, forward and backward. Both versions are checked to agree.

Usage (from the repository root)::

    python bench/bench_reference_ops.py [--repeats 5] [--batch 64]
    python -m bench.bench_reference_ops

Prints one JSON object on stdout and a one-line summary on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.reference_ops import (  # noqa: E402
    conv_backward,
    conv_forward,
    pool_backward,
    pool_forward,
    same_padding,
)


# --------------------------------------------------------------------------- #
# naive loop versions (loops over images, rows, cols)
# --------------------------------------------------------------------------- #
def _pad_same(A: np.ndarray, kh: int, kw: int) -> tuple[np.ndarray, int, int]:
    (pt, pb), (pl, pr) = same_padding(A.shape[1], kh, 1), same_padding(A.shape[2], kw, 1)
    return np.pad(A, ((0, 0), (pt, pb), (pl, pr), (0, 0))), pt, pl


def naive_conv_forward(A: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """'same' padding, stride 1, ReLU."""
    m, h, w, _ = A.shape
    kh, kw, _, c_new = W.shape
    A_pad, _, _ = _pad_same(A, kh, kw)
    W_flat = W.reshape(-1, c_new)
    Z = np.empty((m, h, w, c_new))
    for i in range(m):
        for y in range(h):
            for x in range(w):
                Z[i, y, x] = A_pad[i, y : y + kh, x : x + kw].reshape(-1) @ W_flat
    return np.maximum(Z + b, 0)


def naive_conv_backward(dZ: np.ndarray, A: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m, h, w, _ = A.shape
    kh, kw, _, c_new = W.shape
    A_pad, pt, pl = _pad_same(A, kh, kw)
    dA_pad = np.zeros_like(A_pad)
    dW = np.zeros_like(W)
    db = np.zeros((1, 1, 1, c_new))
    for i in range(m):
        for y in range(h):
            for x in range(w):
                g = dZ[i, y, x]
                dA_pad[i, y : y + kh, x : x + kw] += W @ g
                dW += A_pad[i, y : y + kh, x : x + kw, :, None] * g
                db[0, 0, 0] += g
    return dA_pad[:, pt : pt + h, pl : pl + w], dW, db


def naive_pool_forward(A: np.ndarray, k: int, s: int) -> np.ndarray:
    m, h, w, c = A.shape
    oh, ow = (h - k) // s + 1, (w - k) // s + 1
    P = np.empty((m, oh, ow, c))
    for i in range(m):
        for y in range(oh):
            for x in range(ow):
                P[i, y, x] = A[i, y * s : y * s + k, x * s : x * s + k].max(axis=(0, 1))
    return P


def naive_pool_backward(dP: np.ndarray, A: np.ndarray, k: int, s: int) -> np.ndarray:
    """Gradient to the first maximum of each window (row-major), per channel."""
    m, oh, ow, c = dP.shape
    dA = np.zeros_like(A)
    cols = np.arange(c)
    for i in range(m):
        for y in range(oh):
            for x in range(ow):
                win = A[i, y * s : y * s + k, x * s : x * s + k].reshape(k * k, c)
                first = win.argmax(axis=0)
                dA[i, y * s + first // k, x * s + first % k, cols] += dP[i, y, x]
    return dA


# --------------------------------------------------------------------------- #
# timing
# --------------------------------------------------------------------------- #
def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up (and the result to compare)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def max_diff(a, b) -> float:
    if isinstance(a, tuple):
        return max(max_diff(x, y) for x, y in zip(a, b))
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per op")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    A = rng.random((args.batch, 28, 28, 1))
    W = rng.normal(0.0, np.sqrt(2 / 25), size=(5, 5, 1, 6))  # he_normal-like
    b = rng.normal(0.0, 0.1, size=(1, 1, 1, 6))
    A1 = conv_forward(A, W, b, "relu", padding="same")
    dP = rng.standard_normal((args.batch, 14, 14, 6))
    dA1 = pool_backward(dP, A1, (2, 2), (2, 2), mode="max")
    dZ = dA1 * (A1 > 0)

    ops = {
        "conv_forward": (
            lambda: naive_conv_forward(A, W, b),
            lambda: conv_forward(A, W, b, "relu", padding="same", stride=(1, 1)),
        ),
        "pool_forward": (
            lambda: naive_pool_forward(A1, 2, 2),
            lambda: pool_forward(A1, (2, 2), (2, 2), mode="max"),
        ),
        "pool_backward": (
            lambda: naive_pool_backward(dP, A1, 2, 2),
            lambda: pool_backward(dP, A1, (2, 2), (2, 2), mode="max"),
        ),
        "conv_backward": (
            lambda: naive_conv_backward(dZ, A, W),
            lambda: conv_backward(dZ, A, W, b, padding="same", stride=(1, 1)),
        ),
    }
    result: dict[str, object] = {
        "config": {
            "batch": list(A.shape),
            "conv": "6@5x5 same stride 1 + relu",
            "pool": "max 2x2 stride 2",
            "dtype": str(A.dtype),
            "repeats": args.repeats,
            "statistic": "median wall-clock seconds (after one warm-up run)",
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        }
    }
    for name, (naive, vectorized) in ops.items():
        t_naive, out_naive = median_time(naive, args.repeats)
        t_vec, out_vec = median_time(vectorized, args.repeats)
        diff = max_diff(out_naive, out_vec)
        if diff > 1e-9:
            raise AssertionError(f"{name}: naive and vectorized differ by {diff:.3e}")
        result[name] = {
            "naive_s": round(t_naive, 6),
            "vectorized_s": round(t_vec, 6),
            "speedup": round(t_naive / t_vec, 1),
            "max_abs_diff": diff,
        }

    print(json.dumps(result, indent=2))
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "reference_ops.json").write_text(json.dumps(result, indent=2) + "\n")
    summary = ", ".join(f"{k} x{v['speedup']}" for k, v in result.items() if k != "config")
    print(f"vectorized vs naive loops (batch {args.batch}x28x28x1): {summary}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
