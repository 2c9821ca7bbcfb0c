"""The pipeline's stages (one module each, run by dvc.yaml) and what they share."""

import logging
import os
import sys
from typing import NoReturn

# TensorFlow's C++ start-up notices (CPU features, oneDNN) would open every stage's log,
# also under a plain `dvc repro`; its warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow's pip wheels turn their oneDNN kernels on only for CPUs with AVX-512 VNNI/BF16
# or AMX; elsewhere (AVX2 laptops, AMD) convolutions and pooling run on Eigen kernels built
# without AVX2. oneDNN trains LeNet-5 about 3x faster on such a CPU (bench/RESULTS.md) and stays
# deterministic under enable_op_determinism. Must be set before TensorFlow is imported;
# TF_ENABLE_ONEDNN_OPTS=0 in the environment still turns it off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def exit_now(code: int) -> NoReturn:
    """End a process that loaded TensorFlow (a stage, or the tracking worker) once its work is
    done, skipping the interpreter's teardown: tearing TensorFlow down takes about 2 s of one
    core and does nothing for a finished stage, whose outputs are written, closed and renamed
    into place. Log handlers and standard streams are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
