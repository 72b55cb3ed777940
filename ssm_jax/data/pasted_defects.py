"""Synthetic anomalies made on the accelerator, inside a jitted train step: content of another image of the batch
pasted through smooth random blobs.

This project's own generator, in the spirit of DRAEM's but not its copy, nor SNARM's: SNARM's released code makes two
defective copies of each training image offline, with Perlin-noise masks (scales 2^0-2^5, rotated, thresholded at
0.5, components over 250 px) filled with a DTD texture or the image's own content augmented and shuffled in an 8 x 8
grid, at opacity 0.3-1; its training code, which would say how those copies are mixed in, is not released.

``paste_defects(images, key)`` returns defective images, their pixel masks and image labels. A fraction of the batch
gets a defect: a mask from low-frequency noise (a random grid of 2 to 16 cells per side, cubic upsampling)
thresholded at a random area, filled with another image of the batch (rolled by a random offset, rotated by a
random multiple of 90 degrees on square images), blended with a random opacity. It works on normalised images (the
blend is affine, so normalising before or after gives the same result) and is a pure function of ``key``: a
resumed run draws the same defects as an uninterrupted one. ``ssm_jax.data.synthetic`` draws shaped defects
(scratches, cracks, ...) on the host for evaluation sets; this is the cheap per-step counterpart for training.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def smooth_noise(key: jax.Array, batch: int, height: int, width: int, grids: Sequence[int] = (2, 4, 8, 16)):
    """(batch, height, width) low-frequency noise; each image uses one grid size of ``grids``, chosen at random."""
    keys = jax.random.split(key, len(grids) + 1)
    choice = jax.random.randint(keys[0], (batch,), 0, len(grids))
    noise = jnp.zeros((batch, height, width), jnp.float32)
    for i, grid in enumerate(grids):
        coarse = jax.random.uniform(keys[i + 1], (batch, grid + 1, grid + 1))
        noise = jnp.where((choice == i)[:, None, None], jax.image.resize(coarse, (batch, height, width), "cubic"),
                          noise)
    return noise


def paste_defects(images: jax.Array, key: jax.Array, fraction: float = 0.5, area: tuple[float, float] = (0.005, 0.1),
                  opacity: tuple[float, float] = (0.5, 1.0), grids: Sequence[int] = (2, 4, 8, 16)):
    """(images (B, H, W, C) with defects, masks (B, H, W) float32 in {0, 1}, labels (B,) int32).

    Each image is defective with probability ``fraction``; its mask covers a uniform-random share in ``area`` of
    the image; the pasted content is blended with an opacity uniform in ``opacity``.
    """
    if images.ndim != 4:
        raise ValueError(f"paste_defects: images have shape {images.shape}, expected (batch, height, width, channels)")
    if not 0 <= fraction <= 1 or not 0 < area[0] <= area[1] < 1 or not 0 < opacity[0] <= opacity[1] <= 1:
        raise ValueError(f"paste_defects: fraction={fraction} must lie in [0, 1], area={tuple(area)} in (0, 1) and "
                         f"opacity={tuple(opacity)} in (0, 1], each (low, high) with low <= high")
    b, h, w, _ = images.shape
    k_label, k_noise, k_area, k_src, k_rot, k_roll, k_alpha = jax.random.split(key, 7)
    labels = jax.random.uniform(k_label, (b,)) < fraction
    noise = smooth_noise(k_noise, b, h, w, grids)
    share = jax.random.uniform(k_area, (b,), minval=area[0], maxval=area[1])
    threshold = jax.vmap(jnp.quantile)(noise.reshape(b, -1), 1.0 - share)
    masks = (noise > threshold[:, None, None]) & labels[:, None, None]
    source = jnp.roll(images, jax.random.randint(k_src, (), 1, max(b, 2)) if b > 1 else 0, axis=0)
    if h == w:
        turns = jax.random.randint(k_rot, (b,), 0, 4)
        source = sum(jnp.where((turns == t)[:, None, None, None], jnp.rot90(source, t, axes=(1, 2)), 0.0)
                     for t in range(4))
    shifts = jax.random.randint(k_roll, (b, 2), 0, jnp.array([h, w]))
    source = jax.vmap(lambda image, s: jnp.roll(image, (s[0], s[1]), axis=(0, 1)))(source, shifts)
    alpha = jax.random.uniform(k_alpha, (b, 1, 1, 1), minval=opacity[0], maxval=opacity[1]) * masks[..., None]
    return images * (1 - alpha) + source * alpha, masks.astype(jnp.float32), labels.astype(jnp.int32)
