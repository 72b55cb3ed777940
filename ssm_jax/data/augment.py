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
from PIL import Image

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
    coordinates outside the image clamped to its edge. Zero rotation and shift at scale 1 return the input's values.

    Bilinear output is float32 (uint8 pixels in, their interpolated values out, on the same 0-255 scale), computed
    by PIL's float-mode affine resampling on a copy padded with its edge pixels just far enough for every source
    coordinate; an image whose channels are all equal (grayscale stored as RGB, as most defect datasets are) is
    warped once. Nearest keeps the dtype."""
    h, w, channels = image.shape
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # Output pixel o comes from c + R(theta)^-1 (o - c - shift) / scale, in (row, column) coordinates with rows
    # pointing down, where R(theta) = [[cos, -sin], [sin, cos]] turns counter-clockwise as displayed.
    inverse = np.array([[cos, sin], [-sin, cos]]) / scale
    if nearest:  # coordinates in the centred form, whose rounding at exact half-pixel ties masks have always had
        rows = (np.arange(h) - (h - 1) / 2 - shift[0])[:, None]
        cols = (np.arange(w) - (w - 1) / 2 - shift[1])[None, :]
        y = np.clip(inverse[0, 0] * rows + inverse[0, 1] * cols + (h - 1) / 2, 0, h - 1).ravel()
        x = np.clip(inverse[1, 0] * rows + inverse[1, 1] * cols + (w - 1) / 2, 0, w - 1).ravel()
        index = np.rint(y).astype(np.int64) * w + np.rint(x).astype(np.int64)
        return np.take(image.reshape(h * w, channels), index, axis=0).reshape(image.shape)
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - inverse @ (centre + np.asarray(shift, np.float64))  # source = inverse @ output + offset
    if all(np.array_equal(image[..., 0], image[..., c]) for c in range(1, channels)):
        return np.repeat(_bilinear_plane(image[..., 0], inverse, offset)[..., None], channels, axis=2)
    return np.stack([_bilinear_plane(image[..., c], inverse, offset) for c in range(channels)], axis=-1)


def _bilinear_plane(plane: np.ndarray, inverse: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """(H, W) plane read bilinearly at source (row, col) = inverse @ (row, col) + offset of each output pixel, as
    float32, clamping to the edge: PIL's affine transform of the plane padded by edge replication to cover the
    corners' source coordinates (an affine map's extremes), so its fill colour is never read."""
    h, w = plane.shape
    corners = inverse @ np.array([[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]], np.float64) + offset[:, None]
    pad = int(math.ceil(max(0.0, -corners.min(), corners[0].max() - (h - 1), corners[1].max() - (w - 1)))) + 1
    padded = np.pad(plane.astype(np.float32, copy=False), pad, mode="edge")
    # PIL maps output pixel centres (x + 0.5, y + 0.5) to source (a (x + .5) + b (y + .5) + c, d (x + .5) + ...) and
    # samples with pixel centres at + 0.5: the source column in padded pixel coordinates is
    # inverse[1, 1] x + inverse[1, 0] y + offset[1] + pad, and the row likewise.
    a, b, d, e = inverse[1, 1], inverse[1, 0], inverse[0, 1], inverse[0, 0]
    coefficients = (a, b, offset[1] + pad + 0.5 - 0.5 * (a + b), d, e, offset[0] + pad + 0.5 - 0.5 * (d + e))
    warped = Image.fromarray(padded).transform((w, h), Image.Transform.AFFINE, coefficients,
                                               resample=Image.Resampling.BILINEAR)  # float32 -> mode "F"
    return np.asarray(warped)


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
