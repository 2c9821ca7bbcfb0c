"""Stage `normalize@<dataset>`: pixel scaling, optional grayscale and padding to LeNet's 32x32.

Modes (`normalize.mode`), each a per-channel affine map x -> x * scale + offset:
  unit         x / 255, as the course notebooks do;
  lecun        background (0) -> -0.1 and foreground (255) -> 1.175, as in LeCun et al.
               1998, which makes the mean roughly 0 and the variance roughly 1 on MNIST;
  standardize  (x - mean) / std per channel, fitted on the training split only (fitting
               on val or test would leak them into training) and saved in stats.json.
Padding adds background (raw 0) around the image, so a 28x28 digit sits centred in a
32x32 field as in the paper; images already that large are left as they are.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from pipeline import files, paths, stage, tracking
from pipeline.config import NormalizeParams, Params

log = logging.getLogger("pipeline.normalize")
LECUN_BACKGROUND, LECUN_FOREGROUND = -0.1, 1.175
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's "L" mode


def to_grayscale(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] == 1:
        return x
    return np.rint(x.astype(np.float32) @ LUMA).clip(0, 255).astype(np.uint8)[..., np.newaxis]


def pad_to(x: np.ndarray, size: int | None) -> np.ndarray:
    """Zero-pad (N, H, W, C) images to size x size, centred; larger images are unchanged."""
    if size is None:
        return x
    pad_h, pad_w = max(0, size - x.shape[1]), max(0, size - x.shape[2])
    if not pad_h and not pad_w:
        return x
    return np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))


def fit_affine(train_x: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, offset) such that normalized = x * scale + offset."""
    channels = train_x.shape[-1]
    if mode == "unit":
        scale, offset = np.full(channels, 1 / 255), np.zeros(channels)
    elif mode == "lecun":
        scale = np.full(channels, (LECUN_FOREGROUND - LECUN_BACKGROUND) / 255)
        offset = np.full(channels, LECUN_BACKGROUND)
    elif mode == "standardize":
        pixels = train_x.reshape(-1, channels).astype(np.float64)
        mean, std = pixels.mean(axis=0), pixels.std(axis=0)
        std = np.where(std > 0, std, 1.0)  # a constant channel stays constant rather than dividing by 0
        scale, offset = 1 / std, -mean / std
    else:
        raise ValueError(f"normalize.mode: unknown mode {mode!r}; expected unit, lecun or standardize")
    return scale.astype(np.float32), offset.astype(np.float32)


def apply_affine(x: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) * scale + offset


def normalize_splits(splits: dict[str, dict[str, np.ndarray]], settings: NormalizeParams) -> tuple[dict, dict]:
    """Normalize every split with statistics from the training split; returns (splits, stats)."""
    prepared = {name: pad_to(to_grayscale(s["x"]) if settings.grayscale else s["x"], settings.pad_to)
                for name, s in splits.items()}
    scale, offset = fit_affine(prepared["train"], settings.mode)
    out = {name: {"x": apply_affine(x, scale, offset), "y": splits[name]["y"]} for name, x in prepared.items()}
    stats = {"mode": settings.mode, "scale": scale.tolist(), "offset": offset.tolist(),
             "pad_to": settings.pad_to, "grayscale": settings.grayscale,
             "input_shape": list(prepared["train"].shape[1:]), "fitted_on": "train"}
    return out, stats


def main(args: argparse.Namespace, params: Params) -> None:
    source = paths.SPLIT / args.dataset
    splits = {name: files.load_arrays(source / f"{name}.npz") for name in paths.SPLITS}
    meta = files.read_json(source / "meta.json")
    normalized, stats = normalize_splits(splits, params.normalize)
    with files.atomic_directory(paths.NORMALIZED / args.dataset) as out:
        for name, split in normalized.items():
            files.save_arrays(out / f"{name}.npz", **split)
        files.write_json(out / "stats.json", stats)
        files.write_json(out / "meta.json", {**meta, "input_shape": stats["input_shape"]})
    log.info("normalized %s: mode %s, input shape %s", args.dataset, stats["mode"], stats["input_shape"])
    with tracking.stage_run(params, args.dataset, "normalize"):
        tracking.log_params({"mode": stats["mode"], "pad_to": stats["pad_to"], "grayscale": stats["grayscale"],
                             "input_shape": stats["input_shape"], "scale": stats["scale"], "offset": stats["offset"]})


if __name__ == "__main__":
    stage.enter(__spec__.name, __doc__, "dataset")
