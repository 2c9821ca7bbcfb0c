"""What the recipes cost: augmentation per training epoch, and equalization of GTSRB's training set.

Why: issue targets: augmentation adds at most 15% to a LeNet-5 modern GTSRB epoch, and
equalizing the 39,209 training images takes at most 5 s on 2 cores.

Augmentation: LeNet-5 modern on the repository's data/normalized/gtsrb (run `dvc repro
normalize@gtsrb` first), the shipped batch size and train.threads (the jitter runs in tf.data's
own threads, beside the training's), epochs with and without the augmentation of --augment
(default: every jitter on), in alternation, in one process each round; the median epoch time
of each (an epoch's first, traced, epoch is dropped).
Equalization: histogram and CLAHE over data/split/gtsrb's train + val images (39,209),
median of --repeats, alternating.

Usage: .venv/bin/python bench/bench_recipes.py [--rounds 2] [--epochs 3] [--repeats 3]
Writes bench/results/recipes.json and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from scratch import write_result

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "recipes.json"
JITTER = {
    "rotation": 10.0,
    "translation": 0.1,
    "zoom": 0.1,
    "shear": 5.0,
    "brightness": 0.1,
    "contrast": 0.2,
    "flip": False,
}


def epoch_seconds(augment: bool, epochs: int) -> list[float]:
    """Per-epoch seconds of LeNet-5 modern on GTSRB, in a fresh process (this script, --child)."""
    command = [sys.executable, __file__, "--child", "on" if augment else "off", "--epochs", str(epochs)]
    env = {**os.environ, "PIPELINE_TRACKING": "off", "PYTHONPATH": str(ROOT)}
    output = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])["epoch_seconds"]


def child(augment: bool, epochs: int) -> None:
    from dataclasses import replace

    import pipeline  # noqa: F401  the stages' TensorFlow settings (oneDNN)
    from pipeline.config import load_params
    from pipeline.training.compute import resolve_threads
    from pipeline.training.loop import train
    from pipeline.training.recipe import AugmentSettings

    params = load_params(ROOT / "params.yaml")
    # the shared recipe (not the design's own GTSRB one), jitter on or off, nothing else; threads
    # resolved as the train stage resolves them (run_settings in pipeline/stages/train.py)
    settings = replace(
        params.train,
        epochs=epochs,
        augment=AugmentSettings(**(JITTER if augment else {})),
        schedule="constant",
        restore_best=False,
        threads=resolve_threads(params.train.threads),
    )

    class NoCheckpoint:
        def save(self, *args: object) -> None:  # measure training, not checkpoint writes
            pass

    result = train(
        params.design("lenet5_modern"),
        "gtsrb",
        params.run_seed(None),
        NoCheckpoint(),  # type: ignore[arg-type]
        settings,
    )
    print(json.dumps({"epoch_seconds": [row["seconds"] for row in result["history"]]}))


def equalization(repeats: int) -> dict[str, list[float]]:
    import numpy as np

    from pipeline.core import files
    from pipeline.portable.preprocess import equalized

    images = np.concatenate(
        [files.load_arrays(ROOT / f"data/split/gtsrb/{name}.npz")["x"] for name in ("train", "val")]
    )
    seconds: dict[str, list[float]] = {"histogram": [], "clahe": []}
    for _ in range(repeats):
        for method in seconds:
            started = time.perf_counter()
            equalized(images, method)
            seconds[method].append(time.perf_counter() - started)
    return {"images": len(images), **seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=("on", "off"))
    args = parser.parse_args()
    if args.child:
        child(args.child == "on", args.epochs)
        return
    sys.path.insert(0, str(ROOT))
    plain: list[float] = []
    jittered: list[float] = []
    for _ in range(args.rounds):
        plain += epoch_seconds(False, args.epochs)[1:]
        jittered += epoch_seconds(True, args.epochs)[1:]
    eq = equalization(args.repeats)
    result = {
        "benchmark": "recipe costs",
        "cpus": os.cpu_count(),
        "augment": JITTER,
        "threads": yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["threads"],
        "epoch_seconds": {"plain": plain, "augmented": jittered},
        "epoch_seconds_median": {"plain": statistics.median(plain), "augmented": statistics.median(jittered)},
        "augmentation_overhead": statistics.median(jittered) / statistics.median(plain) - 1,
        "equalization": {**eq, "median": {m: statistics.median(eq[m]) for m in ("histogram", "clahe")}},
    }
    write_result(RESULT, result)
    print(
        f"augmentation +{result['augmentation_overhead']:.1%} per LeNet-5 modern GTSRB epoch "
        f"({result['epoch_seconds_median']['augmented']:.2f} s vs {result['epoch_seconds_median']['plain']:.2f} s); "
        f"equalizing {eq['images']} images: histogram {result['equalization']['median']['histogram']:.2f} s, "
        f"CLAHE {result['equalization']['median']['clahe']:.2f} s"
    )


if __name__ == "__main__":
    main()
