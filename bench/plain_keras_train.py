"""What a user writes by hand, for bench/bench_train.py: load arrays, build, `model.fit`.

Usage: plain_keras_train.py <project dir> <dataset> <design> <epochs> <batch size>
Prints {"fit_seconds": ..., "epochs": ...} as its last line.
"""

import json
import sys
import time
from pathlib import Path

# Keras (TensorFlow) first, as a user's script does: importing pipeline first would set its
# TF_ENABLE_ONEDNN_OPTS default (pipeline/__init__.py), and `plain` must run on TensorFlow's own.
import keras  # noqa: F401
import numpy as np

from pipeline.config import load_params
from pipeline.designs.keras_build import build_model
from pipeline.training.compile import compile_model

project, dataset, design, epochs, batch_size = sys.argv[1:6]
data = Path(project) / "data" / "normalized" / dataset
train, val = np.load(data / "train.npz"), np.load(data / "val.npz")
x, y, x_val, y_val = train["x"], train["y"], val["x"], val["y"]
params = load_params(Path(project) / "params.yaml")
# The same architecture and optimizer as the stage, so only the training loop differs.
model = compile_model(
    build_model(params.design(design), x.shape[1:], int(y.max()) + 1, params.run_seed(None)),
    params.design(design),
    params.train_settings(design, dataset),
    steps_per_epoch=-(-len(y) // int(batch_size)),
)
started = time.perf_counter()
model.fit(x, y, batch_size=int(batch_size), epochs=int(epochs), validation_data=(x_val, y_val), verbose=0)
print(json.dumps({"fit_seconds": time.perf_counter() - started, "epochs": int(epochs)}))
