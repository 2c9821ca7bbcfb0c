"""On-the-fly augmentation of training batches (`train.augment`), seeded by (seed, epoch, batch).

One projective warp per image does the geometry (rotation, shear, zoom, translation and the
optional flip, composed into one 3x3 matrix, bilinear, edges repeated), so a batch costs one
pass over its pixels; brightness and contrast are then an affine map per image, and noise is
added last, as a sensor adds it. Every draw is
a stateless random op keyed by the batch's seed, so the jitter of epoch e is the same
whether a run trained epochs 1..e-1 in this process or resumed from a checkpoint.

Images arrive normalized (x * scale + offset of pipeline/portable/preprocess.py); brightness and
noise are given as fractions of the raw 0..255 range, so they are scaled by `scale` here.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from pipeline.training.recipe import AugmentSettings


def augment_batch(images: tf.Tensor, seed: tf.Tensor, settings: AugmentSettings, pixel_scale: np.ndarray) -> tf.Tensor:
    """A jittered copy of a (N, H, W, C) float batch; `seed` is a stateless seed, shape [2]."""
    count = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(
        tf.cast(seed, tf.int64), num=8
    )  # one stream per draw: angle, shear, zoom, x, y, flip, contrast, brightness

    def uniform(index: int, limit: float) -> tf.Tensor:
        return tf.random.stateless_uniform([count], seeds[index], -limit, limit)

    out = images
    if settings.rotation or settings.shear or settings.zoom or settings.translation or settings.flip:
        height, width = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
        angle = uniform(0, math.radians(settings.rotation))
        shear = uniform(1, math.radians(settings.shear))
        scale = 1.0 + uniform(2, settings.zoom)
        shift_x, shift_y = uniform(3, settings.translation) * width, uniform(4, settings.translation) * height
        mirror = (
            tf.where(tf.random.stateless_uniform([count], seeds[5]) < 0.5, -1.0, 1.0)
            if settings.flip
            else tf.ones([count])
        )
        out = _warp(out, angle, shear, scale, mirror, shift_x, shift_y, height, width)
    if settings.contrast:
        factor = 1.0 + uniform(6, settings.contrast)
        mean = tf.reduce_mean(out, axis=[1, 2], keepdims=True)
        out = mean + (out - mean) * factor[:, None, None, None]
    if settings.brightness:
        shift = uniform(7, settings.brightness)[:, None, None, None] * (255.0 * tf.constant(pixel_scale, tf.float32))
        out = out + shift
    if settings.noise:
        # its own streams, folded from the batch's seed: the eight above stay what they were without noise
        noise_seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 8), num=2
        )
        deviation = tf.random.stateless_uniform([count], noise_seeds[0], 0.0, settings.noise)
        pixel_range = 255.0 * tf.constant(pixel_scale, tf.float32)  # per channel
        out = out + tf.random.stateless_normal(tf.shape(out), noise_seeds[1]) * (
            deviation[:, None, None, None] * pixel_range
        )
    return out


def _warp(
    images: tf.Tensor,
    angle: tf.Tensor,
    shear: tf.Tensor,
    scale: tf.Tensor,
    mirror: tf.Tensor,
    shift_x: tf.Tensor,
    shift_y: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
) -> tf.Tensor:
    """Warp each image by rotation . shear . zoom . mirror about its centre, then shift.

    ImageProjectiveTransformV3 maps each OUTPUT pixel to the input pixel it samples, so the
    matrix built here is that output -> input map; every range is symmetric, so drawing the
    inverse transform draws from the same distribution.
    """
    cos, sin, tan = tf.cos(angle), tf.sin(angle), tf.tan(shear)
    # A = R(angle) @ [[1, tan], [0, 1]] @ diag(scale * mirror, scale)
    a00, a01 = cos * scale * mirror, (cos * tan - sin) * scale
    a10, a11 = sin * scale * mirror, (sin * tan + cos) * scale
    cx, cy = (width - 1) / 2, (height - 1) / 2
    # input = centre + A @ (output - centre) + shift
    b0 = cx - a00 * cx - a01 * cy + shift_x
    b1 = cy - a10 * cx - a11 * cy + shift_y
    zeros = tf.zeros_like(angle)
    transforms = tf.stack([a00, a01, b0, a10, a11, b1, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
