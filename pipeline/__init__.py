"""The pipeline's stages (one module each, run by dvc.yaml) and what they share."""

import glob
import importlib.util
import logging
import os
import sys
from typing import NoReturn


def gpu_present() -> bool:
    """Whether TensorFlow will train on an NVIDIA GPU: a driver's device node, TensorFlow's CUDA
    libraries installed (`make setup GPU=1`), and CUDA_VISIBLE_DEVICES not hiding it. Answered
    without importing TensorFlow, which must see the CPU-only settings below before it loads."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1") or not glob.glob("/dev/nvidia[0-9]*"):
        return False
    try:
        return importlib.util.find_spec("nvidia.cudnn") is not None
    except ModuleNotFoundError:
        return False


# TensorFlow's C++ start-up notices (CPU features, oneDNN) would open every stage's log,
# also under a plain `dvc repro`; its warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow's pip wheels turn their oneDNN kernels on only for CPUs with AVX-512 VNNI/BF16
# or AMX; elsewhere (AVX2 laptops, AMD) convolutions and pooling run on Eigen kernels built
# without AVX2. oneDNN trains LeNet-5 about 3x faster on such a CPU (bench/RESULTS.md) and stays
# deterministic under enable_op_determinism. Must be set before TensorFlow is imported;
# TF_ENABLE_ONEDNN_OPTS=0 in the environment still turns it off. A CPU choice: with a GPU,
# TensorFlow's own default stands.
if not gpu_present():
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
