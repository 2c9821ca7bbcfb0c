"""How the stages run TensorFlow: thread counts, the GPU probe, and the CPU-only choices."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.core import process
from pipeline.core.errors import UserError
from pipeline.training import compute
from tests.conftest import REPO


def test_explicit_threads_are_used_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compute.AUTO_THREADS_VARIABLE, "3")  # only `auto` listens to the runner
    assert compute.resolve_threads(2) == 2


def test_auto_threads_take_the_runners_count_else_the_cores_of_a_lone_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(compute.AUTO_THREADS_VARIABLE, "3")
    assert compute.resolve_threads("auto") == 3
    monkeypatch.delenv(compute.AUTO_THREADS_VARIABLE)
    assert compute.resolve_threads("auto") == compute.available_cores()  # not told otherwise: it trains alone
    monkeypatch.setenv(compute.AUTO_THREADS_VARIABLE, "0")
    with pytest.raises(UserError, match="PIPELINE_AUTO_THREADS: must be a positive integer, got '0'"):
        compute.resolve_threads("auto")


def test_threads_are_set_before_the_first_op_and_cannot_change_after() -> None:
    probe = """
from pipeline.training import compute
import tensorflow as tf
compute.use_threads(1)
compute.use_threads(1)  # the same again: fine
print(tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads())
tf.constant(1.0) + 1.0
try:
    compute.use_threads(2)
except RuntimeError as error:
    print("refused:", error)
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout
    first, refused = out.strip().splitlines()[-2:]
    assert first == "1 1"
    assert refused.startswith("refused: cannot set TensorFlow to 2 threads: its runtime already started")


@pytest.mark.parametrize(
    "visible, nodes, cuda_libraries, expected",
    [
        (None, [], True, False),  # no driver: this machine
        (None, ["/dev/nvidia0"], False, False),  # a GPU, but TensorFlow's CPU-only wheels
        ("-1", ["/dev/nvidia0"], True, False),  # hidden by CUDA_VISIBLE_DEVICES
        ("", ["/dev/nvidia0"], True, False),
        (None, ["/dev/nvidia0"], True, True),
        ("0", ["/dev/nvidia0"], True, True),
    ],
)
def test_the_gpu_probe_needs_a_driver_the_cuda_wheels_and_a_visible_device(
    monkeypatch: pytest.MonkeyPatch, visible, nodes, cuda_libraries, expected
) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(process.glob, "glob", lambda pattern: nodes)
    monkeypatch.setattr(process.importlib.util, "find_spec", lambda name: object() if cuda_libraries else None)
    assert process.gpu_present() is expected


def test_on_a_cpu_the_stages_keep_their_cpu_choices() -> None:
    """No GPU here: oneDNN on, tf.data's autotuner off with a fixed prefetch, the recorded thread count."""
    probe = """
import numpy as np
import pipeline
from pipeline.training import compute
from pipeline.training import loop
from tensorflow.python.util import _pywrap_util_port as port
import tensorflow as tf
compute.use_threads(1)
x, y = np.zeros((4, 2, 2, 1), np.float32), np.zeros(4, np.int64)
print(pipeline.gpu_present(), port.IsMklEnabled(), loop.batches(x, y, 2).options().autotune.enabled,
      tf.config.threading.get_intra_op_parallelism_threads())
"""
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "False True False 1"


def test_with_a_gpu_tf_data_tunes_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.training import loop

    x, y = np.zeros((4, 2, 2, 1), np.float32), np.zeros(4, np.int64)
    assert loop.batches(x, y, 2).options().autotune.enabled is False
    monkeypatch.setattr(loop, "gpu_present", lambda: True)
    assert loop.batches(x, y, 2).options().autotune.enabled is not False


def test_bfloat16_on_a_cpu_without_its_instructions_is_said_to_be_emulated(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(compute, "gpu_present", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pipeline.training.compute"):
        monkeypatch.setattr(compute, "cpu_flags", lambda: {"avx2", "avx512f"})
        compute.warn_if_emulated("mixed_bfloat16")
        assert "emulates it, slower than float32" in caplog.text
        caplog.clear()
        monkeypatch.setattr(compute, "cpu_flags", lambda: {"avx2", "amx_bf16"})
        compute.warn_if_emulated("mixed_bfloat16")
        compute.warn_if_emulated("float32")
        assert not caplog.text


def test_the_device_names_the_cpu_and_its_bfloat16_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compute, "cpu_flags", lambda: {"avx2", "avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(compute, "cpu_model", lambda: "Some Xeon")
    assert compute.device() == f"CPU: Some Xeon, {compute.available_cores()} cores (amx_bf16, avx512_bf16)"
