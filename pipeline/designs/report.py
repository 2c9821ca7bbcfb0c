"""Architecture report: what each layer of a built model costs and sees.

Per layer: output shape, parameters (trainable / non-trainable), multiply-accumulates,
activation memory for a batch, and receptive field. The train stage logs the table as an
MLflow artifact and the totals as params/metrics; the CLI prints it for any design:

    python -m pipeline architecture mnist lenet5_classic [--batch-size 128]

How the numbers are counted (estimates that make designs comparable, not profiler output):

* MACs (per image): multiplications by a weight, each added to a sum. A convolution does
  k_h*k_w*c_in per output value (the partially connected C3 only its connected kernels),
  a dense layer `inputs` per unit, the RBF output `dim` per class (its squared distances),
  the trainable subsampling and batch normalization one per output value (the
  coefficient / scale). Pooling, activations, dropout and flatten do none; biases are
  additions, not MACs.
* forward: the layer's output for the whole batch (elements * batch * bytes per element).
  Inference only needs one layer's input and output alive at a time, so the forward
  total is the peak of input + output over the layers.
* backprop: what training keeps until the backward pass reaches the layer: its output
  (gradients of weights need their layer's input, the previous output; activations
  need their own output). Flatten is a view of its input and keeps nothing new. The
  total, with the input images, is the activation memory one training step needs on
  top of weights, gradients and optimizer state.
* receptive field: the input window (height x width) one output value depends on, and
  the jump (the input distance between neighbouring output values), from
  r_out = r_in + (k - 1) * jump_in and jump_out = jump_in * stride. It ignores padding,
  so with `same` padding part of the window may lie outside the image. After flatten,
  global pooling or a dense layer on flat features, every value sees the whole input.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from pipeline.designs.keras_build import LAYER_TYPES


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if np.isscalar(value) else (int(value[0]), int(value[1]))


def _window(layer: keras.layers.Layer) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(kernel, stride) of a layer that slides a window over the image; None if it does not."""
    name = type(layer).__name__
    if isinstance(layer, keras.layers.Conv2D):
        dilation = _pair(layer.dilation_rate)
        kernel = tuple((k - 1) * d + 1 for k, d in zip(_pair(layer.kernel_size), dilation))
        return kernel, _pair(layer.strides)
    if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
        return _pair(layer.pool_size), _pair(layer.strides)
    if name == "TrainableSubsampling":
        return _pair(layer.pool_size), _pair(layer.pool_size)
    if name == "PartiallyConnectedConv2D":
        return _pair(layer.kernel_size), (1, 1)
    return None


def _macs(layer: keras.layers.Layer, in_shape: tuple, out_shape: tuple) -> int:
    """Multiply-accumulates per image (see the module docstring for what counts)."""
    name = type(layer).__name__
    out_values = math.prod(out_shape)
    if isinstance(layer, keras.layers.Conv2D):
        return out_values * math.prod(_pair(layer.kernel_size)) * in_shape[-1] // layer.groups
    if name == "PartiallyConnectedConv2D":
        return math.prod(out_shape[:-1]) * layer.num_kernel_weights
    if isinstance(layer, keras.layers.Dense):
        return out_values * in_shape[-1]
    if name == "EuclideanRBF":
        return out_values * in_shape[-1]
    if name == "TrainableSubsampling" or isinstance(layer, keras.layers.BatchNormalization):
        return out_values
    return 0


def _bytes(shape: tuple, batch_size: int, dtype: Any) -> int:
    return math.prod(shape) * batch_size * np.dtype(keras.backend.standardize_dtype(dtype)).itemsize


def _weight_count(weights: list) -> int:
    return sum(math.prod(w.shape) for w in weights)


def architecture_report(model: keras.Model, batch_size: int) -> dict[str, Any]:
    """Per-layer figures of a built single-input, chain-shaped model, and their totals.

    Returns {"model", "batch_size", "input_shape", "layers": [...], "totals": {...}}; every
    total is a number, so it can be logged as an MLflow metric as it is.
    """
    image = model.inputs[0]
    input_shape = tuple(int(d) for d in image.shape[1:])
    spatial = len(input_shape) == 3
    field, jump = ((1, 1), (1, 1)) if spatial else (None, None)
    input_bytes = _bytes(input_shape, batch_size, image.dtype)
    rows = [
        {
            "name": "input",
            "type": "input",
            "keras_class": "InputLayer",
            "output_shape": list(input_shape),
            "trainable_params": 0,
            "non_trainable_params": 0,
            "macs": 0,
            "forward_bytes": input_bytes,
            "backprop_bytes": input_bytes,  # the first layer's weight gradients need it
            "receptive_field": list(field) if field else None,
            "jump": list(jump) if jump else None,
        }
    ]
    forward_peak = input_bytes
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        in_shape = tuple(int(d) for d in layer.input.shape[1:])
        out_shape = tuple(int(d) for d in layer.output.shape[1:])
        window = _window(layer)
        if field is not None and window is not None:
            (kh, kw), (sh, sw) = window
            field = (field[0] + (kh - 1) * jump[0], field[1] + (kw - 1) * jump[1])
            jump = (jump[0] * sh, jump[1] * sw)
        elif len(out_shape) != 3:  # flat features: every value depends on the whole image
            field = jump = None
        forward = _bytes(out_shape, batch_size, layer.output.dtype)
        forward_peak = max(forward_peak, _bytes(in_shape, batch_size, layer.input.dtype) + forward)
        is_view = isinstance(layer, (keras.layers.Flatten, keras.layers.Reshape))
        rows.append(
            {
                "name": layer.name,
                "type": LAYER_TYPES.get(type(layer).__name__, type(layer).__name__.lower()),
                "keras_class": type(layer).__name__,
                "output_shape": list(out_shape),
                "trainable_params": _weight_count(layer.trainable_weights),
                "non_trainable_params": _weight_count(layer.non_trainable_weights),
                "macs": _macs(layer, in_shape, out_shape),
                "forward_bytes": forward,
                "backprop_bytes": 0 if is_view else forward,
                "receptive_field": list(field) if field else None,
                "jump": list(jump) if jump else None,
            }
        )
    fields = [max(row["receptive_field"]) for row in rows if row["receptive_field"]]
    totals = {
        "layers": len(rows) - 1,
        "params": sum(r["trainable_params"] + r["non_trainable_params"] for r in rows),
        "trainable_params": sum(r["trainable_params"] for r in rows),
        "non_trainable_params": sum(r["non_trainable_params"] for r in rows),
        "macs": sum(r["macs"] for r in rows),
        "forward_peak_bytes": forward_peak,
        "training_activation_bytes": sum(r["backprop_bytes"] for r in rows),
        # the widest input window a spatial layer reaches before the features are flattened
        "receptive_field": max(fields) if fields else 0,
    }
    return {
        "model": model.name,
        "batch_size": batch_size,
        "input_shape": list(input_shape),
        "layers": rows,
        "totals": totals,
    }


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n_bytes < 1024:
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.2f} GiB"


def _hw(pair: list[int] | None, whole: str) -> str:
    return whole if pair is None else "×".join(str(p) for p in pair)


def format_report(report: dict[str, Any]) -> str:
    """The report as a markdown table (for MLflow, the CLI and READMEs)."""
    totals = report["totals"]
    lines = [
        f"### {report['model']}: {totals['params']:,} parameters, {totals['macs']:,} MACs per image",
        "",
        f"Input {_hw(report['input_shape'], '')}; activation memory for a batch of {report['batch_size']} "
        "(forward: the layer's output; backprop: what training keeps for the backward pass). "
        "Receptive field and jump are in input pixels; `all` = the whole image.",
        "",
        "| # | layer | Keras class | output | trainable | non-trainable | MACs | forward | backprop "
        "| receptive field | jump |",
        "|--:|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for index, row in enumerate(report["layers"]):
        lines.append(
            f"| {index} | {row['name']} | {row['keras_class']} | {_hw(row['output_shape'], '')} | "
            f"{row['trainable_params']:,} | {row['non_trainable_params']:,} | {row['macs']:,} | "
            f"{_size(row['forward_bytes'])} | {_size(row['backprop_bytes'])} | "
            f"{_hw(row['receptive_field'], 'all')} | {_hw(row['jump'], '-')} |"
        )
    lines.append(
        f"| | **total** | {totals['layers']} layers | | {totals['trainable_params']:,} | "
        f"{totals['non_trainable_params']:,} | {totals['macs']:,} | peak {_size(totals['forward_peak_bytes'])} | "
        f"{_size(totals['training_activation_bytes'])} | max {totals['receptive_field']} | |"
    )
    return "\n".join(lines) + "\n"


def dataset_shape(params: Any, dataset: str) -> tuple[tuple[int, ...], int]:
    """(input shape, class count) the models of `dataset` get.

    From data/normalized/<dataset>/meta.json when normalize has run (it is what train
    reads); else as params predict it (`Params.input_shape`).
    """
    from pipeline import datasets
    from pipeline.core import files, paths

    meta_path = paths.NORMALIZED / dataset / "meta.json"
    if meta_path.exists():
        meta = files.read_json(meta_path)
        return tuple(meta["input_shape"]), len(meta["class_names"])
    return params.input_shape(dataset), datasets.get(dataset).num_classes


# What a prediction costs. A measurement: it varies from run to run and with what else runs.
LATENCY_CALLS = 100  # timed one-image calls after WARM_UP_CALLS; their median is reported
WARM_UP_CALLS = 10


def graph_call(model: keras.Model) -> Callable[[Any], float]:
    """The seconds one call of `model` on a batch (a tensor) takes, called as a compiled graph function, as a
    deployed model runs: `model.predict` builds a dataset per call, whose overhead is most of a one-image call's."""
    import tensorflow as tf

    predict = tf.function(lambda images: model(images, training=False))

    def seconds(images: Any) -> float:
        started = time.perf_counter()
        np.asarray(predict(images))
        return time.perf_counter() - started

    return seconds


def latency_ms(seconds: Callable[[Any], float], image: Any) -> float:
    """The median of LATENCY_CALLS timed calls on one image (a batch of 1), after WARM_UP_CALLS, in ms."""
    for _ in range(WARM_UP_CALLS):
        seconds(image)
    return 1000 * float(np.median([seconds(image) for _ in range(LATENCY_CALLS)]))
