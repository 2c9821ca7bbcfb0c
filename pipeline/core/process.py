"""Process helpers shared by every entry: the GPU probe and TensorFlow's quiet start (both before TensorFlow
loads), and a fast exit."""

from __future__ import annotations

import contextlib
import glob
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType
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


# What TensorFlow's C++ libraries print through absl while they load, before TF_CPP_MIN_LOG_LEVEL applies:
# absl's notice that logging is not initialised yet, and INFO lines such as "oneDNN custom operations
# are on" (the project turns oneDNN on deliberately, pipeline/__init__.py). Users read them as errors.
_LOAD_NOTICE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called|I\d{4} [\d:. ]+\d+ \S+:\d+\] "
)


def quiet_tensorflow_start() -> None:
    """Hide TensorFlow's load-time INFO notices from stderr, unless TF_CPP_MIN_LOG_LEVEL=0 asks for
    them (TensorFlow's own switch for INFO logs). Its warnings and errors, and all else on stderr, still show."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") != "0" and not any(
        isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as Python does, and loads it with its load notices filtered out of stderr."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with _stderr_without_load_notices():
            self.loader.exec_module(module)


@contextlib.contextmanager
def _stderr_without_load_notices() -> Iterator[None]:
    """Send file descriptor 2 to a file for the block (the C++ libraries write to it directly), then
    pass on every line but the notices, in order, even when the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = b"".join(line for line in captured if not _LOAD_NOTICE.match(line))
            if kept:
                os.write(2, kept)
