"""The corruption benchmark's corruptions: 15 kinds at 5 severities, applied with albumentations.

The kinds follow ImageNet-C and CIFAR-10-C (Hendrycks & Dietterich 2019), whose constants for 32 x 32
images are the starting point of SEVERITIES, plus MNIST-C's geometric ones (rotation, scale) and a
partial occlusion for the signs. albumentations 2.0.8 implements every kind; imagecorruptions 1.1.2 does
not run with current scikit-image. Where albumentations takes a range, both ends are the severity's
value, so a severity is one strength and only the noise, blur direction or sign of a rotation is drawn.

Every (kind, severity) draws from its own seed, so the benchmark is the same on every run with the same
seed, and adding a kind changes none of the others. docs/robustness.md shows what each looks like; a test
checks that each kind's mean SSIM to the clean images falls with severity.
"""

from __future__ import annotations

import functools
import os
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

SEVERITY_LEVELS = 5
OCCLUDER_GREY = 128  # a neutral patch: neither MNIST's black background nor a sign's colours

# kind -> (ImageNet-C family, the five severities' values, value -> albumentations transform)
Kind = tuple[str, tuple[Any, ...], Callable[[Any], Any]]


def _albumentations() -> Any:
    """albumentations, without the PyPI request for a newer release it otherwise makes on import."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


@functools.cache
def _kinds() -> dict[str, Kind]:
    A = _albumentations()
    import cv2

    def rotated(degrees: float) -> Any:  # either way round, by exactly `degrees`
        return A.OneOf([A.Affine(rotate=(degrees, degrees), p=1), A.Affine(rotate=(-degrees, -degrees), p=1)], p=1)

    return {
        "gaussian_noise": ("noise", (0.04, 0.06, 0.08, 0.09, 0.10), lambda s: A.GaussNoise(std_range=(s, s), p=1)),
        # 1 / the photon count of CIFAR-10-C's Poisson noise (500, 250, 100, 75, 50)
        "shot_noise": ("noise", (0.002, 0.004, 0.01, 0.0133, 0.02), lambda s: A.ShotNoise(scale_range=(s, s), p=1)),
        "impulse_noise": ("noise", (0.01, 0.02, 0.03, 0.05, 0.07), lambda s: A.SaltAndPepper(amount=(s, s), p=1)),
        "defocus_blur": (
            "blur",
            ((1, 0.2), (1, 0.6), (2, 0.3), (2, 0.7), (3, 0.6)),  # (radius, aliasing blur)
            lambda s: A.Defocus(radius=(s[0], s[0]), alias_blur=(s[1], s[1]), p=1),
        ),
        "motion_blur": ("blur", (3, 5, 7, 9, 11), lambda s: A.MotionBlur(blur_limit=(s, s), p=1)),
        "zoom_blur": (
            "blur",
            (1.06, 1.11, 1.16, 1.21, 1.26),
            lambda s: A.ZoomBlur(max_factor=(s, s), step_factor=(0.01, 0.01), p=1),
        ),
        "brightness": (
            "weather",
            (0.05, 0.1, 0.15, 0.2, 0.3),
            lambda s: A.RandomBrightnessContrast(brightness_limit=(s, s), contrast_limit=(0, 0), p=1),
        ),
        # albumentations' RandomFog scatters a few haze discs, too few on a 32-pixel image for its severity to
        # grow (mean SSIM 0.46, 0.38, 0.44, 0.42, 0.41 on GTSRB): ImageNet-C's own fog instead
        "fog": ("weather", (0.2, 0.5, 0.75, 1.0, 1.5), lambda s: lambda image, rng: fogged(image, s, rng)),
        # ImageNet-C's contrast: blend with the image's mean grey (torchvision's, which ColorJitter follows)
        "contrast": (
            "digital",
            (0.75, 0.5, 0.4, 0.3, 0.15),
            lambda s: A.ColorJitter(brightness=(1, 1), contrast=(s, s), saturation=(1, 1), hue=(0, 0), p=1),
        ),
        "elastic_transform": (
            "digital",
            (20, 35, 50, 70, 90),  # alpha, in pixels of displacement before smoothing (sigma 4 px)
            lambda s: A.ElasticTransform(alpha=s, sigma=4, p=1),
        ),
        "pixelate": (
            "digital",
            (0.5, 0.4, 0.33, 0.25, 0.2),  # blocks of 2 to 5 pixels: milder ones alias (SSIM rises and falls)
            lambda s: A.Downscale(
                scale_range=(s, s),
                interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST_EXACT},
                p=1,
            ),
        ),
        "jpeg": ("digital", (80, 65, 58, 50, 40), lambda s: A.ImageCompression(quality_range=(s, s), p=1)),
        "rotation": ("geometric", (5, 10, 15, 20, 25), rotated),
        "scale": ("geometric", (0.9, 0.8, 0.7, 0.6, 0.5), lambda s: A.Affine(scale=(s, s), p=1)),
        "occlusion": (
            "geometric",
            (0.15, 0.25, 0.35, 0.45, 0.55),  # the side of one square patch, as a fraction of the image's
            lambda s: A.CoarseDropout(
                num_holes_range=(1, 1), hole_height_range=(s, s), hole_width_range=(s, s), fill=OCCLUDER_GREY, p=1
            ),
        ),
    }


def names() -> tuple[str, ...]:
    return tuple(_kinds())


def severity_values(kind: str) -> tuple[Any, ...]:
    return _kinds()[kind][1]


def family(kind: str) -> str:
    return _kinds()[kind][0]


def corrupted(images: np.ndarray, kind: str, severity: int, seed: int) -> np.ndarray:
    """uint8 (N, H, W, C) images with corruption `kind` at `severity` (1 to SEVERITY_LEVELS), drawn from `seed`."""
    A = _albumentations()

    _, values, factory = _kinds()[kind]
    if not 1 <= severity <= SEVERITY_LEVELS:
        raise ValueError(f"severity must be 1 to {SEVERITY_LEVELS}, got {severity}")
    transform, seed = factory(values[severity - 1]), _seed(seed, kind, severity)
    if isinstance(transform, (A.BasicTransform, A.BaseCompose)):
        pipeline = A.Compose([transform], seed=seed)
        apply = lambda image: pipeline(image=image)["image"]  # noqa: E731
    else:
        rng = np.random.default_rng(seed)
        apply = lambda image: transform(image, rng)  # noqa: E731
    out = np.empty_like(images)
    for index, image in enumerate(images):
        out[index] = apply(image).reshape(out.shape[1:])  # albumentations drops a gray image's channel axis
    return out


def fogged(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """ImageNet-C's fog: a smooth random haze (its plasma fractal; here two octaves of value noise, 4 x 4 and
    8 x 8 cells, the finer at half weight) added at `strength` times white, then the image rescaled into range."""
    import cv2

    height, width = image.shape[:2]
    haze = sum(
        weight
        * cv2.resize(rng.random((cells, cells), dtype=np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
        for cells, weight in ((4, 2 / 3), (8, 1 / 3))
    )
    hazy = image.astype(np.float32) + strength * 255 * np.clip(haze, 0, 1).reshape(height, width, 1)
    return np.clip(np.rint(hazy / (1 + strength)), 0, 255).astype(np.uint8)


def mean_ssim(clean: np.ndarray, corrupt: np.ndarray) -> float:
    """Mean structural similarity (Wang et al. 2004; scikit-image's, 7 x 7 windows) of uint8 image pairs."""
    from skimage.metrics import structural_similarity

    return float(
        np.mean([structural_similarity(a, b, channel_axis=-1, data_range=255) for a, b in zip(clean, corrupt)])
    )


def _seed(seed: int, kind: str, severity: int) -> int:
    return zlib.crc32(f"{seed}/{kind}/{severity}".encode()) ^ seed
