"""A full-integer (int8) model as it runs on a device: LiteRT's interpreter over a .tflite file.

Evaluate writes the file (pipeline/training/quantize.py) into a folder beside the model folder; `Int8Model` takes
the normalized images the float model takes, quantizes them with the input's scale and zero point,
runs the integer kernels and dequantizes the class scores, so it stands in for the float model
(`predict(x, batch_size=..., verbose=...)`, as Keras' models) wherever one is used.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

INT8_FILE = "model.tflite"
NOT_QUANTIZED_FILE = "not_quantized.txt"  # instead, when the converter cannot: why


def int8_folder(model_folder: str | os.PathLike[str]) -> Path:
    """Where evaluate leaves a model folder's int8 model: beside it (models/<dataset>/<design>/seed_<n>_int8/)."""
    folder = Path(model_folder)
    return folder.with_name(folder.name + "_int8")


class Int8Model:
    """LiteRT's interpreter over one .tflite model with int8 input and output, on `threads` threads."""

    def __init__(self, model: bytes | str | os.PathLike[str], threads: int = 1) -> None:
        self.content = model if isinstance(model, bytes) else Path(model).read_bytes()
        self.threads = threads
        self._batch = -1
        self.interpreter = self._interpreter()
        self.input, self.output = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]

    def _interpreter(self):  # noqa: ANN202 (LiteRT's type)
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_content=self.content, num_threads=self.threads)

    @property
    def size_bytes(self) -> int:
        return len(self.content)

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self.interpreter.resize_tensor_input(self.input["index"], [batch, *self.input["shape"][1:]])
            self.interpreter.allocate_tensors()
            self._batch = batch

    def quantize(self, x: np.ndarray) -> np.ndarray:
        scale, zero = self.input["quantization"]
        return np.clip(np.rint(np.asarray(x, np.float32) / scale + zero), -128, 127).astype(np.int8)

    def predict(self, x: np.ndarray, batch_size: int = 512, verbose: int = 0) -> np.ndarray:
        """Class scores (float32, dequantized) of normalized images `x`, `batch_size` at a time."""
        scale, zero = self.output["quantization"]
        out = []
        for start in range(0, len(x), batch_size):
            chunk = self.quantize(x[start : start + batch_size])
            self._resize(len(chunk))
            self.interpreter.set_tensor(self.input["index"], chunk)
            self.interpreter.invoke()
            out.append((self.interpreter.get_tensor(self.output["index"]).astype(np.float32) - zero) * scale)
        return np.concatenate(out) if out else np.zeros((0, self.output["shape"][-1]), np.float32)

    def latency_ms(self, image: np.ndarray, calls: int = 100, warm_up: int = 10) -> tuple[float, float]:
        """(p50, p95) of `calls` one-image invocations, in ms, after `warm_up` of them: what a device's loop pays."""
        self._resize(1)
        self.interpreter.set_tensor(self.input["index"], self.quantize(image[None]))
        timed = []
        for call in range(warm_up + calls):
            started = time.perf_counter()
            self.interpreter.invoke()
            if call >= warm_up:
                timed.append(1000 * (time.perf_counter() - started))
        return float(np.percentile(timed, 50)), float(np.percentile(timed, 95))
