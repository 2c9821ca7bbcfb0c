"""How the stages run TensorFlow: with how many threads, at which float precision, on which device.

Threads. The thread count changes float results (a sum split over two threads is added in
another order: 1 vs 2 threads gave LeNet-5 val accuracy 0.8792 vs 0.8777), so it is a recorded
train setting, `train.threads`, never what the machine happens to offer: the same params with
the same threads give the same metrics. `auto` trades that for speed: cores ÷ the trainings
that run side by side (`parallel_jobs`), resolved when the stage starts and recorded
(train.json, MLflow, run.json) as the integer it used, so a run says how it was computed even
though its params do not.

Precision. `mixed_bfloat16` computes in bfloat16 and keeps weights in float32 (Keras' mixed
precision); the output layer stays float32 (pipeline.models). It pays on CPUs with bfloat16
instructions (AMX, AVX-512 BF16: lscpu flags amx_bf16, avx512_bf16); elsewhere TensorFlow
emulates it, slower than float32.

Device. The CPU-only choices (oneDNN in pipeline/__init__.py, the fixed tf.data pipeline in
pipeline/train.py, the thread budgets of pipeline/repro.py) apply only when no GPU is used
(`pipeline.gpu_present`). TensorFlow is imported inside the functions that need it: the
parallel runner and params checks use this module without loading it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Iterator

from pipeline import files, gpu_present
from pipeline.errors import UserError

log = logging.getLogger("pipeline.compute")

AUTO = "auto"
PRECISIONS = ("float32", "mixed_bfloat16")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # lscpu / /proc/cpuinfo flags of CPUs that compute bfloat16 natively
# Set by the parallel runner (pipeline/repro.py) for the stages it starts: the threads `auto` means there.
AUTO_THREADS_VARIABLE = "PIPELINE_AUTO_THREADS"


def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0))


def queue_workers(root: Path) -> int:
    """How many `dvc queue start -j N` workers of the repository at `root` are running (0 outside a queue).

    DVC names each worker process `dvc exp queue-worker dvc-exp-<hash>-<n>@localhost`, <hash> being
    the start of the sha256 of the queue's folder (dvc/repo/experiments/queue/celery.py).
    """
    import psutil

    folder = str(root / ".dvc" / "tmp" / "exps" / "celery")
    node = re.compile(rf"dvc-exp-{hashlib.sha256(folder.encode()).hexdigest()[:6]}-\d+@")
    count = 0
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "queue-worker" in command and any(node.match(part) for part in command):
            count += 1
    return count


def parallel_jobs() -> int:
    """How many trainings run side by side, as far as a stage can know: the queue's workers when it
    runs in a queued experiment (in a temporary copy of the repository), else 1 (`dvc repro` runs
    stages one by one)."""
    root = files.project_root()
    return max(1, queue_workers(root)) if Path.cwd().resolve() != root.resolve() else 1


def resolve_threads(setting: int | str) -> int:
    """The thread count a training uses: `setting`, or for `auto` what the parallel runner gave it
    (PIPELINE_AUTO_THREADS), else the cores divided among the trainings that run side by side."""
    if setting != AUTO:
        return int(setting)
    given = os.environ.get(AUTO_THREADS_VARIABLE)
    if given:
        if not given.isdigit() or int(given) < 1:
            raise UserError(f"{AUTO_THREADS_VARIABLE}: must be a positive integer, got {given!r}; unset it or fix it")
        return int(given)
    return max(1, available_cores() // parallel_jobs())


def use_threads(threads: int) -> None:
    """Run TensorFlow's ops on `threads` threads (within an op and across ops). Must precede the
    first op: TensorFlow fixes its thread pools when its runtime starts."""
    import tensorflow as tf

    threading = tf.config.threading
    if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) == (threads,
                                                                                                          threads):
        return
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as error:  # a programming error: something ran an op first
        raise RuntimeError(f"cannot set TensorFlow to {threads} threads: its runtime already started ({error})") \
            from None


@contextlib.contextmanager
def precision(policy: str) -> Iterator[None]:
    """Build layers under Keras' dtype `policy` (float32 or mixed_bfloat16); the previous policy after.

    A built layer keeps its policy, in memory and in the saved model, so only building needs it.
    """
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


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
        log.warning("train.precision mixed_bfloat16 on a CPU without bfloat16 instructions (lscpu flags %s): "
                    "TensorFlow emulates it, slower than float32", " or ".join(BF16_FLAGS))


def device() -> str:
    """What the training runs on, for its MLflow run: the GPU's name, or the CPU model and its bfloat16 flags."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)}"
    flags = sorted(cpu_flags() & set(BF16_FLAGS))
    return f"CPU: {cpu_model()}, {available_cores()} cores" + (f" ({', '.join(flags)})" if flags else "")
