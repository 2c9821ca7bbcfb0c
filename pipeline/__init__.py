"""The pipeline's stages (one module each, run by dvc.yaml) and what they share."""

import os

# TensorFlow's C++ start-up notices (CPU features, oneDNN) would open every stage's log,
# also under a plain `dvc repro`; its warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow's pip wheels turn their oneDNN kernels on only for CPUs with AVX-512 VNNI/BF16
# or AMX; elsewhere (AVX2 laptops, AMD) convolutions and pooling run on Eigen kernels built
# without AVX2. oneDNN trains LeNet-5 2.3x faster on such a CPU (bench/RESULTS.md) and stays
# deterministic under enable_op_determinism. Must be set before TensorFlow is imported;
# TF_ENABLE_ONEDNN_OPTS=0 in the environment still turns it off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
