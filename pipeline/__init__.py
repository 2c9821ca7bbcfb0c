"""The pipeline's stages (one module each, run by dvc.yaml) and what they share."""

import os

# TensorFlow's C++ start-up notices (CPU features, oneDNN) would open every stage's log,
# also under a plain `dvc repro`; its warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
