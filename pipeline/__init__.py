"""A declarative CNN pipeline: `python -m pipeline <command>` (pipeline/cli.py) runs every stage and tool.

The layers, from the top (each imports only from the layers below it; pyproject.toml's
import-linter contracts check it): cli; stages and tools; config; training; designs; datasets;
tracking; analysis; portable; core. Each subpackage's __init__ says what lives there.

Importing this package sets TensorFlow's environment before TensorFlow loads, whatever the entry.
"""

import os

from pipeline.core.process import gpu_present, quiet_tensorflow_start

# TensorFlow's C++ start-up notices (CPU features, oneDNN) would open every command's log;
# its warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
quiet_tensorflow_start()  # and the notices its libraries print while they load; TF_CPP_MIN_LOG_LEVEL=0 shows all

# TensorFlow's pip wheels turn their oneDNN kernels on only for CPUs with AVX-512 VNNI/BF16 or
# AMX; elsewhere convolutions and pooling run on Eigen kernels built without AVX2, much slower
# (bench/RESULTS.md), and oneDNN stays deterministic under enable_op_determinism. Must be set before
# TensorFlow is imported; TF_ENABLE_ONEDNN_OPTS=0 still turns it off. With a GPU, TensorFlow's own
# default stands.
if not gpu_present():
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__all__ = ["gpu_present"]
