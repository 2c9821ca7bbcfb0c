"""How the stages run TensorFlow: with how many threads, at which float precision, on which device.

Threads. The thread count changes float results (a sum split over two threads is added in
another order: 1 vs 2 threads gave LeNet-5 val accuracy 0.8792 vs 0.8777), so it is a recorded
train setting, `train.threads`, never what the machine happens to offer: the same params with
the same threads give the same metrics. `auto` trades that for speed: the count the parallel
runner gives (PIPELINE_AUTO_THREADS: the cores divided among the trainings it runs side by
side; set it yourself for `dvc queue start -j N`), else every core. It is resolved when the
stage starts and recorded (train.json, MLflow, run.json) as the integer it used, so a run says
how it was computed even though its params do not.

Precision. `mixed_bfloat16` computes in bfloat16 and keeps weights in float32 (Keras' mixed
precision); the output layer stays float32 (pipeline.designs.keras_build). It pays on CPUs with bfloat16
instructions (AMX, AVX-512 BF16: lscpu flags amx_bf16, avx512_bf16); elsewhere TensorFlow
emulates it, slower than float32.

Device. The CPU-only choices (oneDNN in pipeline/__init__.py, the fixed tf.data pipeline in
pipeline/training/loop.py, the thread budgets of pipeline/tools/repro.py) apply only when no GPU is used
(`pipeline.core.process.gpu_present`). TensorFlow is imported inside the functions that need it: the
parallel runner and params checks use this module without loading it.
"""

from __future__ import annotations

import logging
import os

from pipeline.core.errors import UserError
from pipeline.core.process import gpu_present

log = logging.getLogger(__name__)

AUTO = "auto"
PRECISIONS = ("float32", "mixed_bfloat16")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # lscpu / /proc/cpuinfo flags of CPUs that compute bfloat16 natively
# Set by the parallel runner (pipeline/tools/repro.py) for the stages it starts: the threads `auto` means there.
AUTO_THREADS_VARIABLE = "PIPELINE_AUTO_THREADS"


def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0))


def resolve_threads(setting: int | str) -> int:
    """The thread count a training uses: `setting`, or for `auto` what the parallel runner (or the
    user) gave it in PIPELINE_AUTO_THREADS, else every core this process may use."""
    if setting != AUTO:
        return int(setting)
    given = os.environ.get(AUTO_THREADS_VARIABLE)
    if given:
        if not given.isdigit() or int(given) < 1:
            raise UserError(f"{AUTO_THREADS_VARIABLE}: must be a positive integer, got {given!r}; unset it or fix it")
        return int(given)
    return available_cores()


def use_threads(threads: int) -> None:
    """Run TensorFlow's ops on `threads` threads (within an op and across ops). Must precede the
    first op: TensorFlow fixes its thread pools when its runtime starts."""
    import tensorflow as tf

    threading = tf.config.threading
    if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) == (
        threads,
        threads,
    ):
        return
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as error:  # a programming error: something ran an op first
        raise RuntimeError(
            f"cannot set TensorFlow to {threads} threads: its runtime already started ({error})"
        ) from None


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            line = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next(line.partition(":")[2].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


def warn_if_emulated(policy: str) -> None:
    """bfloat16 on a CPU without its instructions is emulated: slower than float32, and a surprise."""
    if policy == "mixed_bfloat16" and not gpu_present() and not cpu_flags() & set(BF16_FLAGS):
        log.warning(
            "train.precision mixed_bfloat16 on a CPU without bfloat16 instructions (lscpu flags %s): "
            "TensorFlow emulates it, slower than float32",
            " or ".join(BF16_FLAGS),
        )


def device() -> str:
    """What the training runs on, for its MLflow run: the GPU's name, or the CPU model and its bfloat16 flags."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)}"
    flags = sorted(cpu_flags() & set(BF16_FLAGS))
    return f"CPU: {cpu_model()}, {available_cores()} cores" + (f" ({', '.join(flags)})" if flags else "")
