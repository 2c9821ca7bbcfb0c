"""What happens to an image between its decoded pixels and the model: one home for it.

The normalize stage applies it to every split and pipeline.stages.predict to a user's images, so
the two cannot drift apart. In order (`prepare`):

  equalize     `normalize.equalize`: none, histogram (global histogram equalization) or
               clahe (contrast-limited adaptive histogram equalization, Zuiderveld 1994, as
               OpenCV's: 8x8-pixel tiles, clip limit 2), per image on luminance (BT.601
               Y; the chroma is kept), the contrast normalization behind the 2011 GTSRB
               results. Runs on uint8 pixels, before padding, so padding does not count.
  grayscale    optional, BT.601 luma;
  pad          zero-pad to pad_to x pad_to (LeNet's 32x32 field), centred;
  affine       per-channel x * scale + offset (`normalize.mode`, see fit_affine).

NumPy only, and no import from the rest of the project: the MLflow model ships this file
(pipeline/portable/inference.py), so a client without the project runs the very same steps.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

LECUN_BACKGROUND, LECUN_FOREGROUND = -0.1, 1.175
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's "L" mode
CLAHE_TILE = 8  # pixels per tile side (OpenCV's default 8x8 grid is for large images)
CLAHE_CLIP = 2.0  # OpenCV's default clip limit, in multiples of the mean bin height
CHUNK = 4096  # images per vectorized step: bounds the temporaries to tens of MB


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
    """Per-channel (scale, offset) such that normalized = x * scale + offset.

    unit: x / 255; lecun: background (0) -> -0.1 and foreground (255) -> 1.175, as in LeCun
    et al. 1998; standardize: (x - mean) / std per channel of the images given, which must be
    the training split only (fitting on val or test would leak them into training).
    """
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


def shape_and_equalize(x: np.ndarray, equalize: str, grayscale: bool, size: int | None) -> np.ndarray:
    """Everything before the affine map, on uint8 (N, H, W, C) images."""
    return pad_to(to_grayscale(equalized(x, equalize)) if grayscale else equalized(x, equalize), size)


def prepare(x: np.ndarray, stats: dict) -> np.ndarray:
    """uint8 images as the model was trained on them; `stats` is normalize's stats.json."""
    shaped = shape_and_equalize(x, stats.get("equalize", "none"), stats["grayscale"], stats["pad_to"])
    return apply_affine(shaped, np.asarray(stats["scale"], np.float32), np.asarray(stats["offset"], np.float32))


# --- Contrast normalization on luminance.


def equalized(x: np.ndarray, method: str) -> np.ndarray:
    """uint8 (N, H, W, C) images with their luminance equalized by `method` (config.EQUALIZERS)."""
    if method == "none":
        return x
    steps = {"histogram": _histogram_equalized, "clahe": _clahe_equalized}  # config.EQUALIZERS, but "none"
    if method not in steps:
        raise ValueError(f"normalize.equalize: unknown method {method!r}; expected none, {', '.join(steps)}")
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"equalization takes uint8 (N, H, W, C) images, got {x.dtype} {x.shape}")
    out = np.empty_like(x)
    step = steps[method]
    chunks = [slice(start, start + CHUNK) for start in range(0, len(x), CHUNK)]

    def work(part: slice) -> None:
        out[part] = _on_luminance(x[part], step)

    with ThreadPoolExecutor(max_workers=2) as pool:  # NumPy's big ops release the GIL: both cores work
        list(pool.map(work, chunks))
    return out


def _on_luminance(x: np.ndarray, equalize_luma) -> np.ndarray:
    """Equalize luma Y and move R, G and B by the same amount, which keeps Cb and Cr (BT.601).

    Integer arithmetic throughout, in 16 bits (this runs on every pixel of 39,209 images):
    Y = (77 R + 150 G + 29 B + 128) >> 8, BT.601's weights in 256ths, is the level the
    histogram sees, and the shift is its equalized level minus that level.
    """
    if x.shape[-1] == 1:
        return equalize_luma(x[..., 0])[..., np.newaxis]
    r, g, b = (x[..., channel].astype(np.uint16) for channel in range(3))
    levels = ((r * 77 + g * 150 + b * 29 + 128) >> 8).astype(np.uint8)
    shift = equalize_luma(levels).astype(np.int16) - levels
    return np.clip(x + shift[..., np.newaxis], 0, 255).astype(np.uint8)


def _histograms(values: np.ndarray) -> np.ndarray:
    """Per-row 256-bin histograms of a (rows, pixels) uint8 array."""
    rows = values.shape[0]
    keys = (np.arange(rows, dtype=np.int64)[:, None] * 256 + values).ravel()
    return np.bincount(keys, minlength=rows * 256).reshape(rows, 256)


def _histogram_equalized(y: np.ndarray) -> np.ndarray:
    """Global histogram equalization of (N, H, W) uint8 luminance, as OpenCV's equalizeHist:
    the darkest level present goes to 0, the brightest to 255, the CDF maps the rest."""
    flat = y.reshape(len(y), -1)
    cdf = np.cumsum(_histograms(flat), axis=1)
    lowest = np.take_along_axis(cdf, flat.min(axis=1, keepdims=True).astype(np.int64), axis=1)
    span = flat.shape[1] - lowest
    lut = np.rint((cdf - lowest) * 255.0 / np.maximum(span, 1)).clip(0, 255)
    lut = np.where(span > 0, lut, np.arange(256)[None, :])  # a flat image has nothing to stretch
    return np.take_along_axis(lut, flat.astype(np.int64), axis=1).astype(np.uint8).reshape(y.shape)


def _clahe_equalized(y: np.ndarray) -> np.ndarray:
    """CLAHE of (N, H, W) uint8 luminance: a clipped histogram per tile, its CDF as the tile's
    mapping, and each pixel mapped by bilinear interpolation of its four nearest tiles'."""
    count, height, width = y.shape
    grid_y, grid_x = max(1, round(height / CLAHE_TILE)), max(1, round(width / CLAHE_TILE))
    tile_h, tile_w = -(-height // grid_y), -(-width // grid_x)
    padded = np.pad(y, ((0, 0), (0, grid_y * tile_h - height), (0, grid_x * tile_w - width)), mode="reflect")
    tiles = padded.reshape(count, grid_y, tile_h, grid_x, tile_w).transpose(0, 1, 3, 2, 4)
    hist = _histograms(tiles.reshape(-1, tile_h * tile_w)).astype(np.float32)  # (image x tile, level)
    limit = max(1.0, CLAHE_CLIP * tile_h * tile_w / 256)
    excess = np.maximum(hist - limit, 0).sum(axis=1, keepdims=True)
    hist = np.minimum(hist, limit) + excess / 256  # clipped counts spread evenly over every level
    lut = (np.cumsum(hist, axis=1) * (255.0 / (tile_h * tile_w))).clip(0, 255)

    def neighbours(size: int, tile: int, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centre = (np.arange(size) + 0.5) / tile - 0.5  # position in tile units, 0 = first tile's centre
        low = np.clip(np.floor(centre), 0, grid - 1).astype(np.int64)
        high = np.minimum(low + 1, grid - 1)
        return low, high, np.clip(centre - low, 0, 1).astype(np.float32)

    y0, y1, wy = neighbours(height, tile_h, grid_y)
    x0, x1, wx = neighbours(width, tile_w, grid_x)
    # Four gathers from the flat (image, tile, level) table: index = image's base + tile + level.
    table = lut.reshape(-1).astype(np.float32)
    base = (np.arange(count, dtype=np.int32) * (grid_y * grid_x * 256))[:, None, None] + y.astype(np.int32)

    def at(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.take(table, base + ((rows[:, None] * grid_x + cols[None, :]) * 256).astype(np.int32)[None])

    wy, wx = wy[None, :, None], wx[None, None, :]
    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return np.rint(top * (1 - wy) + bottom * wy).clip(0, 255).astype(np.uint8)
