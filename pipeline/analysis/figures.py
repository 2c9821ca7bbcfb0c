"""Matplotlib figures for evaluation: learning curves, confusion matrices, image grids.

Each function returns a Figure; `save` writes it atomically as PNG and closes it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pipeline.core import files

CORRECT, WRONG = "#1a7f37", "#cf222e"


def save(figure: Figure, path: str | os.PathLike[str]) -> None:
    with files.atomic_file(path) as handle:
        figure.savefig(handle, format="png", dpi=100, bbox_inches="tight")


def subplots(
    rows: int = 1, columns: int = 1, *, figsize: tuple[float, float], squeeze: bool = True
) -> tuple[Figure, Any]:
    """A figure and its axes, as pyplot.subplots makes them, without pyplot: no display backend to choose
    and no global figure list to close (a Figure renders to PNG with Agg by itself)."""
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, columns, squeeze=squeeze)


def learning_curves(history: Sequence[dict[str, float]], title: str) -> Figure:
    epochs = [row["epoch"] for row in history]
    figure, axes = subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        axis.plot(epochs, [row[metric] for row in history], "o-", label="train")
        axis.plot(epochs, [row[f"val_{metric}"] for row in history], "o-", label="validation")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    return figure


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], title: str, normalize: bool) -> Figure:
    """Counts, or rows normalized to recall (each true class sums to 1)."""
    values = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1) if normalize else matrix
    n = len(class_names)
    size = max(5.0, 0.28 * n + 2)
    figure, axis = subplots(figsize=(size + 1, size))
    image = axis.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    labels = [name if len(name) <= 18 else name[:17] + "…" for name in class_names]
    axis.set_xticks(range(n), labels, rotation=90, fontsize=7 if n > 15 else 9)
    axis.set_yticks(range(n), labels, fontsize=7 if n > 15 else 9)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if n <= 15:  # numbers in cells are unreadable beyond that
        threshold = values.max() / 2
        for i in range(n):
            for j in range(n):
                text = f"{values[i, j]:.2f}" if normalize else str(int(values[i, j]))
                axis.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if values[i, j] > threshold else "black",
                )
    axis.set_title(title)
    return figure


def image_grid(
    images: np.ndarray,
    true: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    class_names: Sequence[str],
    title: str,
) -> Figure:
    """Images with predicted class and confidence over the true class; green right, red wrong."""
    count = len(images)
    columns = min(8, max(count, 1))
    rows = max(1, int(np.ceil(count / columns)))
    figure, axes = subplots(rows, columns, figsize=(1.9 * columns, 2.3 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        image = images[index]
        axis.imshow(
            image.squeeze(-1) if image.shape[-1] == 1 else image,
            cmap="gray" if image.shape[-1] == 1 else None,
            vmin=0,
            vmax=255,
        )
        ok = predicted[index] == true[index]
        axis.set_title(
            f"{_short(class_names[predicted[index]])} {confidence[index]:.0%}\ntrue: "
            f"{_short(class_names[true[index]])}",
            fontsize=7,
            color=CORRECT if ok else WRONG,
        )
    figure.suptitle(title)
    return figure


def filters(kernels: np.ndarray, title: str) -> Figure:
    """First-layer kernels (kh, kw, c_in, c_out): one tile per output channel."""
    count = kernels.shape[-1]
    columns = min(8, count)
    rows = int(np.ceil(count / columns))
    figure, axes = subplots(rows, columns, figsize=(1.3 * columns, 1.3 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < count:
            kernel = kernels[..., index]
            kernel = kernel.mean(axis=-1) if kernel.shape[-1] != 3 else kernel
            low, high = kernel.min(), kernel.max()
            axis.imshow((kernel - low) / (high - low + 1e-12), cmap="gray" if kernel.ndim == 2 else None)
            axis.set_title(str(index), fontsize=7)
    figure.suptitle(title)
    return figure


def feature_maps(image: np.ndarray, maps: np.ndarray, title: str) -> Figure:
    """The input image followed by each channel of one layer's activation (h, w, c)."""
    count = maps.shape[-1] + 1
    columns = min(9, count)
    rows = int(np.ceil(count / columns))
    figure, axes = subplots(rows, columns, figsize=(1.4 * columns, 1.5 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index == 0:
            axis.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
            axis.set_title("input", fontsize=7)
        elif index < count:
            axis.imshow(maps[..., index - 1], cmap="viridis")
            axis.set_title(str(index - 1), fontsize=7)
    figure.suptitle(title)
    return figure


def _short(name: str, limit: int = 16) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def reliability_diagram(
    correct: np.ndarray, confidences: dict[str, np.ndarray], eces: dict[str, float], title: str
) -> Figure:
    """Accuracy against confidence per equal-width bin, one panel per kind of confidence (raw, calibrated):
    bars on the diagonal are a calibrated model, bars below it an overconfident one."""
    from pipeline.analysis.calibration import BINS, calibration_bins

    figure, axes = subplots(1, len(confidences), figsize=(5 * len(confidences), 4.6), squeeze=False)
    edges = np.linspace(0, 1, BINS + 1)
    for axis, (name, confidence) in zip(axes[0], confidences.items()):
        count, mean_confidence, accuracy = calibration_bins(confidence, correct)
        shown = count > 0
        axis.bar(edges[:-1][shown], accuracy[shown], width=1 / BINS, align="edge", color="#4c72b0", label="accuracy")
        axis.bar(
            edges[:-1][shown],
            (mean_confidence - accuracy)[shown],
            bottom=accuracy[shown],
            width=1 / BINS,
            align="edge",
            color=WRONG,
            alpha=0.35,
            label="gap to confidence",
        )
        axis.plot([0, 1], [0, 1], "k--", linewidth=1)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence")
        axis.set_ylabel("accuracy")
        axis.set_title(f"{name}: ECE {eces[name]:.4f}")
        axis.legend(loc="upper left")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    return figure


def pareto_plot(
    trials: Sequence[dict],
    front: Sequence[int],
    finalists: Sequence[int],
    cost: str,
    title: str,
    shipped: Sequence[tuple[str, float, float]] = (),
) -> Figure:
    """A search's trials: validation accuracy against `cost` (log scale), each trial by how it ended, the
    Pareto front as a step line, the finalists it ships marked and numbered, and `shipped` designs
    (name, cost, validation accuracy) as stars."""
    figure, axis = subplots(figsize=(8, 5))
    styles = {"completed": ("o", "#0969da"), "pruned": ("x", "#8c959f")}
    for ended, (marker, colour) in styles.items():
        points = [t for t in trials if t["ended"] == ended and t["costs"].get(cost) and t["val_accuracy"] is not None]
        axis.scatter(
            [t["costs"][cost] for t in points],
            [t["val_accuracy"] for t in points],
            marker=marker,
            color=colour,
            label=f"{ended} ({len(points)})" + (", accuracy when stopped" if ended == "pruned" else ""),
        )
    members = sorted((t for t in trials if t["number"] in front), key=lambda t: t["costs"][cost])
    if members:
        axis.step(
            [t["costs"][cost] for t in members],
            [t["val_accuracy"] for t in members],
            where="post",
            color=WRONG,
            label=f"Pareto front ({len(members)})",
        )
    for t in trials:
        if t["number"] in finalists:
            axis.scatter(
                t["costs"][cost], t["val_accuracy"], s=160, facecolors="none", edgecolors=CORRECT, linewidths=2
            )
            axis.annotate(
                f"#{t['number']}", (t["costs"][cost], t["val_accuracy"]), textcoords="offset points", xytext=(6, -12)
            )
    axis.scatter([], [], s=160, facecolors="none", edgecolors=CORRECT, linewidths=2, label="finalists")
    for name, value, accuracy in shipped:
        axis.scatter(value, accuracy, marker="*", s=180, color="#bf8700", zorder=3)
        axis.annotate(name, (value, accuracy), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if shipped:
        axis.scatter(
            [], [], marker="*", s=180, color="#bf8700", label="designs compared (validation accuracy: mean over seeds)"
        )
    axis.set_xscale("log")
    axis.set_xlabel(cost)
    axis.set_ylabel("validation accuracy (best epoch)")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    axis.set_title(title)
    return figure


def search_progress(points: Sequence[tuple[int, float]], title: str) -> Figure:
    """The best validation accuracy of a completed trial so far, against the training epochs spent."""
    figure, axis = subplots(figsize=(8, 4))
    if points:
        axis.step([p[0] for p in points], [p[1] for p in points], where="post", marker="o")
    axis.set_xlabel("training epochs spent (every trial's)")
    axis.set_ylabel("best validation accuracy so far")
    axis.grid(alpha=0.3)
    axis.set_title(title)
    return figure
