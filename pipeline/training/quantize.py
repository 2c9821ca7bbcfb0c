"""Full-integer post-training quantization: a trained Keras model as an int8 TFLite model.

TensorFlow's TFLite converter (still in TF 2.21; its runtime moved to LiteRT, `ai-edge-litert`, which
pipeline/portable/int8.py runs it with) calibrates each tensor's int8 range on a representative set of
training images, then writes a model whose weights, activations, input and output are all int8: what a
microcontroller or an NPU runs. Keras 3's own `model.quantize("int8")` quantizes Dense and convolution
weights only, and keeps float activations, so it would not measure that.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

REPRESENTATIVE_IMAGES = (
    200  # drawn from the training split: enough to settle every activation's range (bench/RESULTS.md)
)


class NotQuantizable(Exception):
    """The converter has no integer kernel for an operation of the model (the message says which)."""


def representative_sample(x_train: np.ndarray, seed: int, count: int = REPRESENTATIVE_IMAGES) -> np.ndarray:
    """A seeded sample of training images: the ranges come from data the model was trained on, never test."""
    rng = np.random.default_rng(seed)
    return x_train[np.sort(rng.choice(len(x_train), size=min(count, len(x_train)), replace=False))]


def to_int8(model: keras.Model, representative: np.ndarray) -> bytes:
    """The model converted to full-integer int8 (input and output int8 too)."""
    import tensorflow as tf

    def images():
        for image in representative:
            yield [image[None].astype(np.float32)]

    # From the model's graph with its weights frozen in: `from_keras_model` first exports a SavedModel,
    # which took longer than the rest of the conversion, for int8 outputs identical on every test image
    # (bench/RESULTS.md)
    serve = tf.function(lambda images: model(images, training=False))
    graph = serve.get_concrete_function(tf.TensorSpec([None, *model.input_shape[1:]], tf.float32))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([graph], model)
    converter.experimental_lower_to_saved_model = False
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = images
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    # The converter prints the SavedModel it exports and, on failure, MLIR's whole log (dozens of lines, one
    # starting "error:"): its output is kept off the terminal, and a failure said in one line
    try:
        with warnings.catch_warnings(), _output_captured() as printed:
            # "Statistics for quantized inputs were expected": the ranges come from the representative images
            warnings.simplefilter("ignore", UserWarning)
            return converter.convert()
    except Exception as error:  # ConverterError: keep the ops it names
        log = f"{error}\n{''.join(printed)}"
        ops = re.search(r"TF Select ops: ([^\n]+)", log)
        dtypes = sorted(set(re.findall(r"tensor<[^>]*x(f64|f16|bf16)>", log)))
        raise NotQuantizable(
            f"TFLite has no int8 kernel for {ops.group(1) if ops else type(error).__name__}"
            + (f" (computed in {', '.join(dtypes)})" if dtypes else "")
        ) from None


@contextlib.contextmanager
def _output_captured() -> Iterator[list[str]]:
    """Send file descriptors 1 and 2 to a file for the block, where C++ libraries and Python both write,
    and keep it off the terminal; the list yielded holds the captured text once the block ends."""
    text: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    printed = io.StringIO()  # Python's own sys.stdout and sys.stderr, wherever they write
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 1)
        os.dup2(captured.fileno(), 2)
        try:
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                yield text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, original in zip((1, 2), saved):
                os.dup2(original, fd)
                os.close(original)
            captured.seek(0)
            text.append(captured.read().decode("utf-8", "replace") + printed.getvalue())
