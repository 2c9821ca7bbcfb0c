"""Stage `evaluate@<dataset>-<design>-<seed>`: measure the trained model on the official test set.

Writes (pipeline/core/paths.py), in metrics/<dataset>/<design>/seed_<seed>/: evaluate.json (test loss
and accuracy, macro scores, calibration before and after temperature scaling, and what a prediction
costs: latency, throughput, model bytes), per_class.json and predictions.csv (one row per test image,
with its raw and calibrated confidence, from which compare computes its statistics);
plots/confusion/<dataset>/<design>/seed_<seed>.csv (DVC's confusion template) and, in
plots/figures/<dataset>/<design>/seed_<seed>/, PNG figures: learning curves, confusion matrices
(counts and row-normalized), sample predictions, the most confident mistakes, the reliability
diagram, first-layer filters and feature maps. The temperature is fitted on the model's outputs on the
validation split, which train saved from its last validation pass (pipeline/analysis/calibration.py):
the test split chooses nothing.

All of it goes into the MLflow run that train opened, so one run holds the whole story; an evaluation
that re-runs alone (only evaluate's params or code changed) gets a run of its own instead,
linked to that train run by its `train_run_id` tag, so the train run keeps its first evaluation.
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import tracking
from pipeline.config import Params
from pipeline.core import files, paths
from pipeline.core.errors import UserError
from pipeline.training import compute

if TYPE_CHECKING:
    import keras

ARGUMENTS = ("dataset", "design", "--seed")
WITH_KERAS = True  # the tracking worker logs the model: it loads Keras while this process does
log = logging.getLogger(__name__)


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict[str, dict[str, float]]:
    from sklearn.metrics import classification_report

    labels = list(range(len(class_names)))
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=class_names, output_dict=True, zero_division=0
    )
    return {name: {k: float(v) for k, v in report[name].items()} for name in class_names}


def to_pixels(x: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Undo the normalization so figures show the images as people see them."""
    scale, offset = np.asarray(stats["scale"], np.float32), np.asarray(stats["offset"], np.float32)
    return np.clip(np.rint((x - offset) / scale), 0, 255).astype(np.uint8)


def pick_samples(
    y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random sample of test images, and the most confident mistakes."""
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(y_true), size=min(count, len(y_true)), replace=False))
    wrong = np.flatnonzero(y_pred != y_true)
    mistakes = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    return sample, mistakes


def evaluate(model: keras.Model, x: np.ndarray, y: np.ndarray, class_names: list[str], batch_size: int) -> dict:
    from sklearn.metrics import confusion_matrix, f1_score

    from pipeline.training.compile import loss_and_accuracy

    probabilities = model.predict(x, batch_size=batch_size, verbose=0)
    loss, accuracy = loss_and_accuracy(model, y, probabilities)
    y_pred = probabilities.argmax(axis=1)
    return {
        "metrics": {
            "test_loss": float(loss),
            "test_accuracy": float(accuracy),
            "test_macro_f1": float(f1_score(y, y_pred, average="macro")),
            "test_errors": int((y_pred != y).sum()),
            "test_images": int(len(y)),
        },
        "per_class": per_class_report(y, y_pred, class_names),
        "confusion": confusion_matrix(y, y_pred, labels=list(range(len(class_names)))),
        "y_pred": y_pred,
        "confidence": probabilities.max(axis=1),
        "probabilities": probabilities,
    }


def calibrate(validation: np.ndarray, y_val: np.ndarray, result: dict, y: np.ndarray) -> None:
    """Fit the temperature on the model's outputs on the validation split (`validation`, saved by train from
    its last validation pass), then score the test split's calibration before and after it; adds the
    metrics and the calibrated confidences to `result`."""
    from pipeline.analysis import calibration

    temperature = calibration.fit_temperature(calibration.log_probabilities(validation), y_val)
    calibrated = calibration.scaled(calibration.log_probabilities(result["probabilities"]), temperature)
    before, after = calibration.scores(result["probabilities"], y), calibration.scores(calibrated, y)
    result["metrics"].update(
        {"temperature": temperature}
        | {f"test_{name}": value for name, value in before.items()}
        | {f"test_{name}_calibrated": value for name, value in after.items()}
    )
    result["calibrated_confidence"] = calibrated.max(axis=1)


def validation_outputs(out: paths.RunPaths) -> tuple[np.ndarray, np.ndarray]:
    """The trained model's outputs on the validation split, as train saved them, and the split's labels."""
    outputs = files.load_arrays(out.validation_outputs)["outputs"]
    _, labels = files.load_split(out.dataset, "val", mapped=True)
    if len(outputs) != len(labels):
        raise UserError(
            f"{out.validation_outputs}: outputs for {len(outputs)} validation images, but the split has "
            f"{len(labels)}: the model was trained on another split; train it again "
            f"(`dvc repro train@{out.dataset}-{out.design}-{out.seed}`)"
        )
    return outputs, labels


# What a prediction costs. A measurement: it varies from run to run and with what else runs.
THROUGHPUT_BATCH = 512
THROUGHPUT_SECONDS = 1.0  # time batches for at least this long, and at least 3 of them


def prediction_cost(model: keras.Model, x: np.ndarray, model_file: Path) -> dict[str, float]:
    """Latency at batch 1 (median ms), throughput at batch THROUGHPUT_BATCH (images/s, from the
    median batch time) and the saved model's size in bytes."""
    import tensorflow as tf

    from pipeline.designs.report import graph_call, latency_ms

    seconds = graph_call(model)
    latency = latency_ms(seconds, tf.constant(x[:1]))
    batch = tf.constant(x[np.arange(THROUGHPUT_BATCH) % len(x)])  # tiny test sets repeat images
    seconds(batch)
    timed: list[float] = []
    while len(timed) < 3 or sum(timed) < THROUGHPUT_SECONDS:
        timed.append(seconds(batch))
    return {
        "predict_latency_ms": latency,
        "predict_images_per_second": THROUGHPUT_BATCH / float(np.median(timed)),
        "model_bytes": model_file.stat().st_size,
    }


def quantized(
    model: keras.Model, out: paths.RunPaths, x: np.ndarray, y: np.ndarray, result: dict, threads: int
) -> None:
    """The model as full-integer int8 (representative images from the training split), written beside the
    model folder, and its test accuracy against the float model's on the same images (exact McNemar),
    size and latency at batch 1; adds them to `result`. A model the converter cannot take gets the reason
    in its int8 folder, one warning, and int8_predicted -1."""
    from pipeline.analysis import stats
    from pipeline.portable.int8 import INT8_FILE, NOT_QUANTIZED_FILE, Int8Model, int8_folder
    from pipeline.training import quantize

    x_train, _ = files.load_split(out.dataset, "train", mapped=True)  # a sample of it
    try:
        content = quantize.to_int8(model, quantize.representative_sample(x_train, out.seed))
    except quantize.NotQuantizable as why:
        log.warning("int8: %s is not quantized: %s", out.design, why)
        with files.atomic_directory(int8_folder(out.model_dir)) as folder:
            (folder / NOT_QUANTIZED_FILE).write_text(f"{why}\n", encoding="utf-8")
        result["int8_predicted"] = np.full(len(y), -1)
        return
    with files.atomic_directory(int8_folder(out.model_dir)) as folder:
        (folder / INT8_FILE).write_bytes(content)
    int8 = Int8Model(content, threads)
    predicted = int8.predict(x).argmax(axis=1)
    float_right, int8_right = result["y_pred"] == y, predicted == y
    p50, p95 = int8.latency_ms(x[0])
    result["metrics"].update(
        {
            "int8_test_accuracy": float(int8_right.mean()),
            "int8_accuracy_change": float(int8_right.mean() - float_right.mean()),
            "int8_mcnemar_p": stats.mcnemar_exact(*stats.discordant(int8_right, float_right)),
            "int8_model_bytes": int8.size_bytes,
            "int8_latency_ms_p50": p50,
            "int8_latency_ms_p95": p95,
        }
    )
    result["int8_predicted"] = predicted


def write_predictions(path: Path, y: np.ndarray, result: dict) -> None:
    """One row per test image, in the test set's order: every statistic of compare comes from these."""
    columns = (result["y_pred"], result["confidence"], result["calibrated_confidence"], result["int8_predicted"])
    with files.atomic_file(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(paths.PREDICTION_COLUMNS)
        writer.writerows(
            (index, int(label), int(predicted), f"{score:.6g}", f"{scaled:.6g}", int(int8))
            for index, (label, predicted, score, scaled, int8) in enumerate(zip(y, *columns))
        )


def first_conv(model: keras.Model) -> keras.layers.Layer | None:
    for layer in model.layers:
        if layer.weights and len(layer.weights[0].shape) == 4:
            return layer
    return None


def main(args: argparse.Namespace, params: Params) -> None:
    from pipeline.analysis import figures
    from pipeline.portable.int8 import int8_folder
    from pipeline.training.compile import load_model

    started = time.perf_counter()
    seed = params.run_seed(args.seed)
    out = paths.RunPaths(args.dataset, args.design, seed)
    run = files.read_json(out.model_dir / "run.json")
    if "threads" in run:  # as the model was trained: the parallel runner budgets evaluate so
        compute.use_threads(run["threads"])
    model = load_model(out.model_dir / "model.keras")
    meta = files.read_json(paths.NORMALIZED / args.dataset / "meta.json")
    stats = files.read_json(paths.NORMALIZED / args.dataset / "stats.json")
    class_names = meta["class_names"]
    x, y = files.load_split(args.dataset, "test", mapped=True)
    result = evaluate(model, x, y, class_names, params.evaluate.batch_size)
    calibration_started = time.perf_counter()
    calibrate(*validation_outputs(out), result, y)
    result["metrics"]["calibration_seconds"] = time.perf_counter() - calibration_started
    log.info(
        "%s on %s (seed %d): test accuracy %.4f, loss %.4f; ECE %.4f, %.4f at temperature %.3f (fitted on validation)",
        args.design,
        args.dataset,
        seed,
        result["metrics"]["test_accuracy"],
        result["metrics"]["test_loss"],
        result["metrics"]["test_ece"],
        result["metrics"]["test_ece_calibrated"],
        result["metrics"]["temperature"],
    )

    # One run with train's: the worker logs the model while this process draws the figures.
    with tracking.stage_run(
        params, args.dataset, "evaluate", model=args.design, run_id=run["run_id"], seed=seed
    ) as tracked:
        _ = tracked.id  # wait until the worker has loaded and opened the run: then it is idle while timing runs
        result["metrics"].update(prediction_cost(model, x, out.model_dir / "model.keras"))
        int8_started = time.perf_counter()
        quantized(model, out, x, y, result, run.get("threads", 1))
        result["metrics"]["int8_seconds"] = time.perf_counter() - int8_started
        log.info(
            "cost per prediction: %.2f ms at batch 1, %.0f images/s at batch %d, %d model bytes",
            result["metrics"]["predict_latency_ms"],
            result["metrics"]["predict_images_per_second"],
            THROUGHPUT_BATCH,
            result["metrics"]["model_bytes"],
        )
        tracking.log_params({"evaluate": params.raw["evaluate"]})
        tracking.log_input(paths.NORMALIZED / args.dataset / "test.npz", f"{args.dataset}-test", "testing")
        tracking.log_model(out.model_dir, result["metrics"])
        tracking.log_metrics(
            {f"test_f1_class_{i:02d}": s["f1-score"] for i, s in enumerate(result["per_class"].values())}
        )
        pngs = draw_figures(model, x, y, result, stats, class_names, out, params, f"{args.design} on {args.dataset}")
        with files.atomic_directory(out.figures) as folder:
            for name, figure in pngs.items():
                figures.save(figure, folder / name)
        with files.atomic_file(out.confusion, "w") as handle:
            writer = csv.writer(handle)
            writer.writerow(["actual", "predicted"])
            writer.writerows(zip((class_names[i] for i in y), (class_names[i] for i in result["y_pred"])))
        write_predictions(out.predictions, y, result)
        # what the stage's work took, its start-up (Python, TensorFlow) aside: what calibration and int8 add to
        result["metrics"]["evaluate_seconds"] = time.perf_counter() - started
        files.write_json(out.metrics_dir / "evaluate.json", result["metrics"])
        files.write_json(out.metrics_dir / "per_class.json", result["per_class"])
        for name in pngs:
            tracking.log_artifact(out.figures / name, "figures")
        tracking.log_artifact(out.metrics_dir / "per_class.json", "reports")
        tracking.log_artifact(out.predictions, "reports")
        for path in sorted(int8_folder(out.model_dir).iterdir()):  # beside the float model: int8/model.tflite
            tracking.log_artifact(path, "int8")
        tracking.log_text(out.confusion.read_text(encoding="utf-8"), "reports/confusion.csv")


def draw_figures(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    result: dict,
    stats: dict[str, Any],
    class_names: list[str],
    out: paths.RunPaths,
    params: Params,
    title: str,
) -> dict[str, Any]:
    """The evaluation's figures by file name: learning curves, confusion matrices, samples,
    mistakes and, for a convolutional model, its first layer's filters and feature maps."""
    import keras

    from pipeline.analysis import figures

    with open(out.history, encoding="utf-8") as handle:
        history = list(csv.DictReader(handle))
    history = [{k: float(v) for k, v in row.items()} for row in history]
    pixels = to_pixels(x, stats)
    sample, mistakes = pick_samples(
        y, result["y_pred"], result["confidence"], params.evaluate.sample_images, params.seed
    )  # the split's seed: every training seed shows the same images
    pngs = {
        "learning_curves.png": figures.learning_curves(history, title),
        "confusion.png": figures.confusion_matrix(result["confusion"], class_names, f"{title}: counts", False),
        "confusion_normalized.png": figures.confusion_matrix(
            result["confusion"], class_names, f"{title}: row-normalized (recall)", True
        ),
        "samples.png": figures.image_grid(
            pixels[sample],
            y[sample],
            result["y_pred"][sample],
            result["confidence"][sample],
            class_names,
            f"{title}: test samples",
        ),
        "mistakes.png": figures.image_grid(
            pixels[mistakes],
            y[mistakes],
            result["y_pred"][mistakes],
            result["confidence"][mistakes],
            class_names,
            f"{title}: most confident mistakes",
        ),
        "reliability.png": figures.reliability_diagram(
            result["y_pred"] == y,
            {"raw": result["confidence"], "temperature-scaled": result["calibrated_confidence"]},
            {"raw": result["metrics"]["test_ece"], "temperature-scaled": result["metrics"]["test_ece_calibrated"]},
            f"{title}: reliability (T = {result['metrics']['temperature']:.3f}, fitted on validation)",
        ),
    }
    conv = first_conv(model)
    if conv is not None:
        kernel = keras.ops.convert_to_numpy(conv.weights[0])
        pngs["filters.png"] = figures.filters(kernel, f"{title}: first-layer filters ({conv.name})")
        probe = keras.Model(model.input, conv.output)
        maps = keras.ops.convert_to_numpy(probe(x[:1]))[0].astype(np.float32)  # bfloat16 under mixed precision
        pngs["feature_maps.png"] = figures.feature_maps(pixels[0], maps, f"{title}: {conv.name} on test image 0")
    return pngs
