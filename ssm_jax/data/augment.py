"""Training augmentations: random flips, 90-degree rotations and a small affine warp, applied to ``image`` and
``mask`` together (the label is untouched: they are label-preserving geometric transforms).

Each is a ``grain`` random map, ``(example, rng) -> example``: grain derives ``rng`` from the pipeline's seed and
the example's position in the (shuffled, repeated) stream, so the same seed gives the same batches and a resumed
iterator the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

FLIPS = {"horizontal": 1, "vertical": 0}
_SPATIAL = ("image", "mask")


def _apply(ex: dict, fn) -> dict:
    return {k: fn(k, v) if k in _SPATIAL else v for k, v in ex.items()}


@dataclasses.dataclass
class RandomFlips:
    """Flips image and mask together, each named axis with probability 1/2."""

    flips: Sequence[str]

    def __call__(self, ex: dict, rng: np.random.Generator) -> dict:
        for name in self.flips:
            if rng.random() < 0.5:
                axis = FLIPS[name]
                ex = _apply(ex, lambda k, v: np.flip(v, axis).copy())
        return ex


@dataclasses.dataclass
class RandomRot90:
    """Rotates image and mask together by k x 90 degrees counter-clockwise, k uniform in {0, 1, 2, 3} (square
    images, so the shape is kept)."""

    def __call__(self, ex: dict, rng: np.random.Generator) -> dict:
        k = int(rng.integers(4))
        return _apply(ex, lambda key, v: np.rot90(v, k, axes=(0, 1)).copy()) if k else ex


def check_affine(affine: Sequence[float]) -> tuple[float, float, float]:
    """``affine`` = (max_degrees, max_scale, max_translate) as floats, or ValueError naming what is wrong."""
    expected = ("expected (max_degrees in [0, 180], max_scale in [0, 1), max_translate in [0, 1)), "
                "the largest rotation, relative scale change and shift as a fraction of the size; zeros turn it off")
    try:
        values = tuple(float(v) for v in affine)
    except (TypeError, ValueError):
        raise ValueError(f"affine={affine!r}: {expected}") from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"affine={affine!r}: {expected}")
    degrees, scale, translate = values
    if not (0 <= degrees <= 180 and 0 <= scale < 1 and 0 <= translate < 1):
        raise ValueError(f"affine={affine!r}: {expected}")
    return values


def warp_affine(image: np.ndarray, degrees: float, scale: float, shift: tuple[float, float],
                nearest: bool = False) -> np.ndarray:
    """``image`` (H, W, C) rotated by ``degrees`` counter-clockwise and scaled by ``scale`` about its centre, then
    shifted by ``shift`` = (rows, columns) pixels; bilinear (``nearest``: nearest-neighbour, for masks), with
    coordinates outside the image clamped to its edge. Zero rotation and shift at scale 1 return the input."""
    h, w, _ = image.shape
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # Output pixel o comes from c + R(theta)^-1 (o - c - shift) / scale, in (row, column) coordinates with rows
    # pointing down, where R(theta) = [[cos, -sin], [sin, cos]] turns counter-clockwise as displayed.
    inverse = np.array([[cos, sin], [-sin, cos]]) / scale
    rows = (np.arange(h) - (h - 1) / 2 - shift[0])[:, None]
    cols = (np.arange(w) - (w - 1) / 2 - shift[1])[None, :]
    y = np.clip(inverse[0, 0] * rows + inverse[0, 1] * cols + (h - 1) / 2, 0, h - 1).ravel()
    x = np.clip(inverse[1, 0] * rows + inverse[1, 1] * cols + (w - 1) / 2, 0, w - 1).ravel()
    flat = image.reshape(h * w, -1)
    if nearest:
        return np.take(flat, np.rint(y).astype(np.int64) * w + np.rint(x).astype(np.int64), axis=0).reshape(image.shape)
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    i00 = y0 * w + x0
    right, down = (x0 < w - 1).astype(np.int64), np.where(y0 < h - 1, w, 0)  # the next pixel, or the edge again
    fy, fx = (y - y0).astype(image.dtype)[:, None], (x - x0).astype(image.dtype)[:, None]
    pixels = lambda index: np.take(flat, index, axis=0)  # 3x faster than fancy indexing
    top, bottom = pixels(i00), pixels(i00 + down)
    top += (pixels(i00 + right) - top) * fx
    bottom += (pixels(i00 + down + right) - bottom) * fx
    return (top + (bottom - top) * fy).reshape(image.shape)


@dataclasses.dataclass
class RandomAffine:
    """A random ``warp_affine`` of image and mask together: rotation uniform in +-``degrees``, scale uniform in
    1 +- ``scale``, shift uniform in +-``translate`` of the height and of the width. Masks are warped
    nearest-neighbour, so they stay {0, 1}."""

    degrees: float
    scale: float
    translate: float

    def __call__(self, ex: dict, rng: np.random.Generator) -> dict:
        angle = rng.uniform(-self.degrees, self.degrees)
        factor = 1 + rng.uniform(-self.scale, self.scale)
        h, w = ex["image"].shape[:2]
        shift = (rng.uniform(-self.translate, self.translate) * h, rng.uniform(-self.translate, self.translate) * w)
        return _apply(ex, lambda k, v: warp_affine(v, angle, factor, shift, nearest=k == "mask"))
