"""Stage `corrupt@<dataset>`: the frozen corruption benchmark, made once from the test split.

Draws `robustness.images` test images with the split's `seed` and writes each of them under every corruption
at every severity (pipeline/datasets/corruptions.py), as the split stores images: uint8, before normalize,
so a model sees a corrupted image through its own preprocessing, as a deployed one would. Writes
data/corrupted/<dataset>/images.npz (`x`: corruption x severity x image x H x W x C, `y`, and `index`,
the images' positions in the test split) and meta.json (the corruptions, their severities' settings and
the mean SSIM of each (corruption, severity) to the clean images). DVC caches it, so every design and seed
is measured on the same bytes. With `experiments.robustness: false` it writes only meta.json, saying so.

The benchmark chooses nothing: no epoch, design or temperature is picked on it.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from pipeline import tracking
from pipeline.analysis import corruptions
from pipeline.config import Params
from pipeline.core import files, paths, progress

ARGUMENTS = ("dataset",)

log = logging.getLogger(__name__)


def draw_images(count: int, wanted: int | None, seed: int) -> np.ndarray:
    """The test images the benchmark corrupts, in test-split order: `wanted` of `count`, drawn with `seed`."""
    if wanted is None or wanted >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=wanted, replace=False))


def benchmark(images: np.ndarray, seed: int) -> tuple[np.ndarray, dict[str, list[float]]]:
    """Every corruption at every severity of uint8 `images`, and each one's mean SSIM to them."""
    kinds = corruptions.names()
    out = np.empty((len(kinds), corruptions.SEVERITY_LEVELS, *images.shape), np.uint8)
    ssim: dict[str, list[float]] = {}
    with progress.bar(len(kinds) * corruptions.SEVERITY_LEVELS, "corrupting", "set") as bar:
        for k, kind in enumerate(kinds):
            for s in range(corruptions.SEVERITY_LEVELS):
                out[k, s] = corruptions.corrupted(images, kind, s + 1, seed)
                ssim.setdefault(kind, []).append(corruptions.mean_ssim(images, out[k, s]))
                bar.update()
    return out, ssim


def main(args: argparse.Namespace, params: Params) -> None:
    meta: dict = {"dataset": args.dataset, "skipped": not params.experiment_robustness}
    with files.atomic_directory(paths.CORRUPTED / args.dataset) as out:
        if params.experiment_robustness:
            test = files.load_arrays(paths.SPLIT / args.dataset / "test.npz")
            index = draw_images(len(test["y"]), params.robustness.images, params.seed)
            x, ssim = benchmark(test["x"][index], params.seed)
            files.save_arrays(out / "images.npz", x=x, y=test["y"][index], index=index)
            meta |= {
                "images": len(index),
                "seed": params.seed,
                "severity_levels": corruptions.SEVERITY_LEVELS,
                "corruptions": [
                    {"name": kind, "family": corruptions.family(kind), "severities": corruptions.severity_values(kind)}
                    for kind in corruptions.names()
                ],
                "mean_ssim": ssim,
            }
        files.write_json(out / "meta.json", meta)
    if meta["skipped"]:
        log.info("corrupt %s: skipped (experiments.robustness is false)", args.dataset)
        return
    log.info(
        "corrupted %d %s test images: %d corruptions x %d severities; mean SSIM to the clean images %.3f (severity 1) "
        "to %.3f (severity %d)",
        meta["images"],
        args.dataset,
        len(meta["corruptions"]),
        corruptions.SEVERITY_LEVELS,
        np.mean([values[0] for values in ssim.values()]),
        np.mean([values[-1] for values in ssim.values()]),
        corruptions.SEVERITY_LEVELS,
    )
    with tracking.stage_run(params, args.dataset, "corrupt"):
        tracking.log_params({"robustness": params.raw["robustness"], "corruptions": list(corruptions.names())})
        tracking.log_metrics(
            {f"ssim.{kind}.{s + 1}": value for kind, values in ssim.items() for s, value in enumerate(values)}
        )
        tracking.log_artifact(paths.CORRUPTED / args.dataset / "meta.json")
