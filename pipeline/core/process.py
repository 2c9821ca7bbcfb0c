"""Process helpers shared by every entry: the GPU probe (answered before TensorFlow loads) and a fast exit."""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import sys
from typing import NoReturn


def gpu_present() -> bool:
    """Whether TensorFlow will train on an NVIDIA GPU: a driver's device node, TensorFlow's CUDA
    libraries installed (`make setup GPU=1`), and CUDA_VISIBLE_DEVICES not hiding it. Answered
    without importing TensorFlow, which must see the CPU-only settings of pipeline/__init__.py first."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1") or not glob.glob("/dev/nvidia[0-9]*"):
        return False
    try:
        return importlib.util.find_spec("nvidia.cudnn") is not None
    except ModuleNotFoundError:
        return False


def exit_now(code: int) -> NoReturn:
    """End a process that loaded TensorFlow once its work is done, skipping the interpreter's
    teardown (seconds of one core that a finished command does not need: its outputs are written,
    closed and renamed into place). Log handlers and standard streams are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
