"""A trained model as its users call it: raw uint8 pixels in, class probabilities out.

The train stage leaves in each model folder (models/<dataset>/<design>/seed_<n>/) the model
and preprocessing.json: the data's meta (class names, the decoded image shape) and
normalize's stats. `Classifier` runs on that folder alone the steps the model was trained
with (pipeline/portable/preprocess.py: equalization, grayscale, padding, scaling), then the model, on
images at the dataset's decoded size: split's output, e.g. GTSRB's resized 32x32x3 crops or
MNIST's 28x28x1 digits.

pipeline.stages.predict classifies through it, and the MLflow model that evaluate logs is this
module over the same folder (MLflow's loader-module workflow: `_load_pyfunc`), so the two
give the same classes. That model ships this file, preprocess.py and lenet5_classic.py (the
classic design's layers) as a package of their own (pipeline/tracking/client.py): its imports are
relative and go no further, so a client without the project loads every design.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .preprocess import prepare

MODEL_FILE = "model.keras"
PREPROCESSING_FILE = "preprocessing.json"
BATCH_SIZE = 512  # as evaluate's default: the same batches give the same arithmetic


class Classifier:
    """The model of a trained model folder, with the preprocessing it was trained with."""

    def __init__(self, folder: str | os.PathLike[str], int8: bool = False) -> None:
        """`int8`: the folder's full-integer model (int8.py), which evaluate writes beside it, instead of Keras'."""
        folder = Path(folder)
        settings = json.loads((folder / PREPROCESSING_FILE).read_text(encoding="utf-8"))
        self.meta: dict[str, Any] = settings["meta"]
        self.normalize: dict[str, Any] = settings["normalize"]
        if int8:
            from .int8 import INT8_FILE, Int8Model, int8_folder

            self.model = Int8Model(int8_folder(folder) / INT8_FILE)
            return
        # Keras (and TensorFlow) load with the first model: importing this module costs nothing.
        import keras

        from . import lenet5_classic  # noqa: F401  registers the classic design's layers for loading

        # Not compiled: predicting needs the layers, not the loss, optimizer or learning-rate schedule.
        self.model = keras.models.load_model(folder / MODEL_FILE, compile=False)

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(height, width, channels) of the images `predict` takes: the dataset's, as the split stage decodes them."""
        return tuple(self.meta["image_shape"])

    def predict(self, images: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Class probabilities, (N, classes) float64, of uint8 (N, height, width, channels) images.

        float64: LeNet-5 classic's RBF output is computed in float64, where probabilities far
        below float32's range still rank the classes. `params`: MLflow's, unused.
        """
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
            raise ValueError(
                f"expected uint8 images of shape (N, {', '.join(map(str, self.image_shape))}), the "
                f"{self.meta['dataset']} images as the model was trained on them; got {images.dtype} "
                f"images of shape {images.shape}"
            )
        if not len(images):
            return np.zeros((0, len(self.class_names)))
        return np.asarray(
            self.model.predict(prepare(images, self.normalize), batch_size=BATCH_SIZE, verbose=0), np.float64
        )


def _load_pyfunc(path: str) -> Classifier:
    """MLflow's entry point (the model's `loader_module`): `path` is the model folder, logged as the model's data."""
    return Classifier(path)
