"""Calibration: how far a model's confidence is from how often it is right, and temperature scaling.

Scores follow Guo et al. 2017 ("On Calibration of Modern Neural Networks"): expected and maximum
calibration error over 15 equal-width confidence bins, negative log-likelihood and the (multi-class)
Brier score. Temperature scaling divides a model's log-probabilities by one scalar T > 0 fitted to
minimise the validation split's NLL; it never changes which class is largest, so accuracy is unchanged.

It works on log-probabilities, not logits, so every design is treated alike: softmax(log p / T) equals
softmax(z / T) for a softmax model with logits z (log p and z differ by a constant per row), and for
LeNet-5 classic's RBF output, whose log p_i is -y_i minus a constant (y: the RBF penalties), it is the
softmax over the negative penalties with its scale 1/T fitted on validation. That defines the classic
design's calibrated probability; its raw output (rows summing to less than 1, the rest on the paper's
"rubbish" class) stays its raw confidence.
"""

from __future__ import annotations

import numpy as np

BINS = 15  # Guo et al.'s equal-width bins
TINY = 1e-300  # log(0) guard: float64 RBF probabilities reach exp(-625), far above this


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(probabilities, np.float64), TINY))


def scaled(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): probabilities over the classes, rows summing to 1."""
    z = log_probs / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    picked = np.asarray(probabilities, np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(picked, TINY)).mean())


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean over images of the squared distance between the probabilities and the one-hot truth."""
    p = np.array(probabilities, np.float64)
    p[np.arange(len(labels)), labels] -= 1.0
    return float((p**2).sum(axis=1).mean())


def calibration_bins(
    confidence: np.ndarray, correct: np.ndarray, bins: int = BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of confidence over (0, 1]: (count, mean confidence, accuracy); empty bins are 0."""
    confidence = np.asarray(confidence, np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # (k/B, (k+1)/B] as Guo et al.
    count = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.where(count > 0, np.bincount(index, confidence, bins) / count, 0.0)
        accuracy = np.where(count > 0, np.bincount(index, np.asarray(correct, np.float64), bins) / count, 0.0)
    return count, mean_confidence, accuracy


def errors(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> tuple[float, float]:
    """(ECE, MCE) of predictions made with `confidence`, `correct` or not: the count-weighted mean and the
    largest |accuracy - confidence| over the non-empty bins. Compare recomputes them so from predictions.csv."""
    count, mean_confidence, accuracy = calibration_bins(confidence, correct, bins)
    gap = np.abs(accuracy - mean_confidence)
    return float((gap * count).sum() / count.sum()), float(gap[count > 0].max())


def calibration_errors(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> tuple[float, float]:
    p = np.asarray(probabilities, np.float64)
    return errors(p.max(axis=1), p.argmax(axis=1) == labels, bins)


def scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    ece, mce = calibration_errors(probabilities, labels)
    return {"ece": ece, "mce": mce, "nll": nll(probabilities, labels), "brier": brier(probabilities, labels)}


def fit_temperature(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the NLL of softmax(log p / T) on (validation) `labels`.

    The NLL is convex in 1/T, so a bounded scalar search over log T finds its minimum; the bounds
    (T from 0.01 to 100) are far outside what trained networks need (Guo et al. report 1 to 3).
    """
    from scipy.optimize import minimize_scalar

    log_probs = np.asarray(log_probs, np.float64)
    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        z = log_probs / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float((np.log(np.exp(z).sum(axis=1)) - z[rows, labels]).mean())

    found = minimize_scalar(loss, bounds=(np.log(0.01), np.log(100.0)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(found.x))
