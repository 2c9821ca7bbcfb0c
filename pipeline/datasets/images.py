"""Image files to pixels: decoding, cropping and resizing, one home for training and prediction.

The split stage decodes GTSRB's images through it (gtsrb_reader.py) and pipeline.stages.predict a
user's images, so an image is cropped and resized for a prediction exactly as the training
images were. Formats are told apart by their content, not their names: binary PPM/PGM
(Netpbm P6/P5, GTSRB's format) is parsed with NumPy (no per-image decoder: 39,209 of them
per split), PNG and JPEG are decoded by Pillow.

Boxes (ROIs) are (X1, Y1, X2, Y2), half-open as in ``Image.crop``: the crop is ``[Y1:Y2, X1:X2]``.
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from pipeline.core.errors import DataError

# File names read as images in folders and archives (their content still decides the format).
IMAGE_SUFFIXES = (".ppm", ".pgm", ".png", ".jpg", ".jpeg")
# Larger images are refused before Pillow decodes them (a decompression bomb unpacks a few KB
# into gigabytes); below Pillow's own warning threshold of 89 million pixels.
MAX_PIXELS = 40_000_000
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Netpbm header: magic, then width, height and maxval separated by whitespace and/or
# '#' comments running to the end of their line, then exactly one whitespace byte. Possessive (`++`):
# a separator has one reading, and backtracking states kept for each of many comments cost megabytes.
_SEP = rb"(?:\s|#[^\r\n]*+[\r\n])++"
_PPM_HEADER = re.compile(rb"P([56])" + _SEP + rb"(\d++)" + _SEP + rb"(\d++)" + _SEP + rb"(\d++)\s")
# Digits of a header number: int() refuses more than 4,300, and 9 give images of 10**18 pixels already.
_MAX_DIGITS = 9

Box = tuple[int, int, int, int]


class ImageFormatError(DataError):
    """Bytes that are not an image of a format read here, or a damaged one (the message names the file)."""


def is_image(head: bytes) -> bool:
    """Whether a file starting with `head` is in a format `decode` reads (its first 8 bytes decide)."""
    return head[:2] in (b"P6", b"P5") or head.startswith((_PNG_MAGIC, _JPEG_MAGIC))


def decode(data: bytes, where: str) -> np.ndarray:
    """An image file's bytes as H x W x C uint8 pixels (C = 1 for gray images, else 3).

    `where` names the file in error messages.
    """
    if data[:2] in (b"P6", b"P5"):
        return decode_ppm(data, where)
    if is_image(data):
        return _decode_with_pillow(data, where)
    raise ImageFormatError(
        f"{where}: not an image (it starts with {data[:8]!r}); expected a PPM, PGM, PNG or JPEG file"
    )


def decode_ppm(data: bytes, where: str) -> np.ndarray:
    """Binary PPM (P6) or PGM (P5) bytes -> H x W x C uint8 view (C = 3 or 1)."""
    match = _PPM_HEADER.match(data)
    if match is None:
        if data[:2] not in (b"P6", b"P5"):
            raise ImageFormatError(f"{where}: magic {data[:2]!r}; expected a binary PPM starting with b'P6' (or b'P5')")
        raise ImageFormatError(
            f"{where}: malformed header {data[:40]!r}; expected 'P6 <width> <height> <maxval>' "
            f"followed by one whitespace byte"
        )
    channels = 3 if match.group(1) == b"6" else 1
    if any(len(digits.lstrip(b"0")) > _MAX_DIGITS for digits in match.group(2, 3, 4)):
        raise ImageFormatError(
            f"{where}: header numbers of more than {_MAX_DIGITS} digits; expected 'P6 <width> <height> <maxval>'"
        )
    width, height, maxval = int(match.group(2)), int(match.group(3)), int(match.group(4))
    if not 1 <= maxval <= 65535 or width < 1 or height < 1:
        raise ImageFormatError(
            f"{where}: header {width}x{height} maxval {maxval}; expected a non-empty image with 1 <= maxval <= 65535"
        )
    sample_bytes = 1 if maxval < 256 else 2
    count = width * height * channels
    offset = match.end()
    if len(data) - offset < count * sample_bytes:
        raise ImageFormatError(
            f"{where}: truncated, {len(data) - offset} raster bytes; expected "
            f"{count * sample_bytes} for {width}x{height}x{channels} with maxval {maxval}"
        )
    pixels = np.frombuffer(data, np.uint8 if sample_bytes == 1 else ">u2", count, offset)
    if maxval != 255:
        if int(pixels.max()) > maxval:
            raise ImageFormatError(
                f"{where}: sample {int(pixels.max())} above maxval {maxval}; expected samples <= maxval"
            )
        pixels = ((pixels.astype(np.uint32) * 255 + maxval // 2) // maxval).astype(np.uint8)
    return pixels.reshape(height, width, channels)


def _decode_with_pillow(data: bytes, where: str) -> np.ndarray:
    """PNG or JPEG bytes: gray modes as one channel, everything else (palette, alpha, CMYK) as RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageFormatError(
                    f"{where}: {image.width}x{image.height} pixels; expected at most "
                    f"{MAX_PIXELS:,} pixels (crop or shrink it first)"
                )
            upright = ImageOps.exif_transpose(image)  # cameras store the rotation in EXIF, not in the pixels
            gray = upright.mode in ("1", "L", "LA", "I", "F") or upright.mode.startswith("I;")
            pixels = np.asarray(upright.convert("L" if gray else "RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageFormatError(f"{where}: cannot decode ({error}); the file is damaged or not an image") from None
    return pixels[..., np.newaxis] if gray else pixels


def crop_and_resize(images: Sequence[np.ndarray], boxes: Sequence[Box | None], size: int, channels: int) -> np.ndarray:
    """Images (H x W x 1 or 3, sizes may differ) cropped to their boxes (None: whole), resized to
    size x size as Pillow's BILINEAR does, with `channels` channels (3: gray replicated; 1: luma)."""
    crops = []
    for pixels, box in zip(images, boxes):
        if box is not None:
            x1, y1, x2, y2 = box
            pixels = pixels[y1:y2, x1:x2]
        if pixels.shape[2] == 1:  # gray: resizing it replicated to RGB gives the same values
            pixels = np.repeat(pixels, 3, axis=2)
        crops.append(pixels)
    resized = resize_bilinear(crops, size)
    return luma(resized) if channels == 1 else resized


def luma(rgb: np.ndarray) -> np.ndarray:
    """Pillow's convert("L") of (..., 3) uint8 RGB: ITU-R 601-2 luma in 16-bit fixed point, as (..., 1)."""
    wide = rgb.astype(np.uint32)
    gray = (wide[..., 0] * 19595 + wide[..., 1] * 38470 + wide[..., 2] * 7471 + 0x8000) >> 16
    return gray.astype(np.uint8)[..., np.newaxis]


# --------------------------------------------------------------------------- resizing
#
# Quality: Pillow's BILINEAR is not the 2x2-tap bilinear of OpenCV or TF. When it shrinks,
# Pillow widens the triangle filter by the scale factor, so every source pixel contributes
# (an antialiased, area-like average): 250 -> 32 does not alias. It is sharper than BOX
# when enlarging small crops (15 -> 32 px; BOX would be nearest-neighbour), free of the
# ringing of BICUBIC/LANCZOS, and the cheapest of the antialiased filters.
#
# Speed: one `Image.resize` call per image costs more Python overhead than arithmetic for a 32x32
# result. Pillow resizes separably, a horizontal pass (rounded
# to uint8) then a vertical one, and a pass that leaves one axis unchanged is skipped. A
# horizontal pass never mixes rows, so all crops of one width are stacked into one tall
# image and resized horizontally in a single call; then all intermediates of one height
# are laid side by side and resized vertically in a single call. It is Pillow's own
# arithmetic, so the result equals ``Image.fromarray(crop).resize((size, size), BILINEAR)``
# bit for bit (tests check this), whatever the batching.
#
# Pass order: since Pillow 13 (python-pillow/Pillow#9549) a resize whose height shrinks
# much more than its width runs the vertical pass first, which changes rounding. Those
# crops are transposed before the two passes and back after, which swaps the order.
# `_vertical_first` is that rule for square outputs, found by comparing both orders with
# Pillow 13.0 on ~10,000 (height, width, size) cases, crops of 2 to 260 pixels, sizes 8 to
# 64; the tests check it against the installed Pillow. Older Pillow always went horizontal
# first: with it, tall crops could differ by 1 in a few pixels (Pillow is pinned).


def _vertical_first(height: int, width: int, size: int) -> bool:
    """Whether Pillow resizes a height x width image to size x size vertically first."""
    return height > size and 2 * width < height + size


def resize_bilinear(crops: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Resize H x W x 3 uint8 crops (sizes may differ) to an n x size x size x 3 array.

    Equals ``Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR)`` per crop.
    """
    n = len(crops)
    out = np.empty((n, size, size, 3), np.uint8)
    flipped = [i for i, c in enumerate(crops) if _vertical_first(c.shape[0], c.shape[1], size)]
    oriented = list(crops)
    for i in flipped:
        oriented[i] = crops[i].transpose(1, 0, 2)

    # Pass 1, horizontal: crops of one width stacked vertically -> rows x size.
    mid: list[np.ndarray] = list(oriented)
    for width, idx in _groups(oriented, axis=1).items():
        if width == size:
            continue
        tall = np.concatenate([oriented[i] for i in idx])
        wide = np.asarray(Image.fromarray(tall).resize((size, len(tall)), Image.Resampling.BILINEAR))
        top = 0
        for i in idx:
            mid[i] = wide[top : top + len(oriented[i])]
            top += len(oriented[i])

    # Pass 2, vertical: intermediates of one height side by side -> size x (k * size).
    for height, idx in _groups(mid, axis=0).items():
        row = np.concatenate([mid[i] for i in idx], axis=1)
        if height != size:
            row = np.asarray(Image.fromarray(row).resize((row.shape[1], size), Image.Resampling.BILINEAR))
        out[idx] = row.reshape(size, len(idx), size, 3).transpose(1, 0, 2, 3)

    if flipped:
        out[flipped] = out[flipped].transpose(0, 2, 1, 3)
    return out


def _groups(arrays: Sequence[np.ndarray], axis: int) -> dict[int, list[int]]:
    """Indices of `arrays` grouped by their length along `axis`."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, a in enumerate(arrays):
        groups[a.shape[axis]].append(i)
    return groups
