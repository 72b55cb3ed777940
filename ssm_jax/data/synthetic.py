"""Synthetic defects with pixel masks drawn onto real normal images: a seeded, offline AD benchmark.

``draw_defect`` paints one defect (scratch, crack, spot, hole, stain) with random size, contrast,
orientation and polarity, blending it through a soft alpha map; the mask is ``alpha > 0.3``. Normal
images are random crops (flipped / rotated) of scikit-image's bundled textures (brick, grass, gravel,
camera) and of functional ELPV cells (p = 0). ``synthetic_source`` builds an AD set from them: train =
normal crops; test = normal crops + defective ones with masks. Train ELPV cells come from the ELPV AD
train split, test cells from its held-out normals. Everything is a function of (seed, split, index).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import draw

from ssm_jax.data import elpv, images
from ssm_jax.data.common import ANOMALY, Source, check_split

DEFECT_TYPES = ("scratch", "crack", "spot", "hole", "stain")
TEXTURES = ("brick", "grass", "gravel", "camera")


def _polyline(canvas: np.ndarray, points: np.ndarray) -> None:
    h, w = canvas.shape
    for (r0, c0), (r1, c1) in zip(points[:-1], points[1:]):
        rr, cc, val = draw.line_aa(int(r0), int(c0), int(r1), int(c1))
        keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        canvas[rr[keep], cc[keep]] = np.maximum(canvas[rr[keep], cc[keep]], val[keep])


def _thicken(alpha: np.ndarray, width: int) -> np.ndarray:
    return ndimage.grey_dilation(alpha, size=(width, width)) if width > 1 else alpha


def _scratch(shape, rng):
    s = min(shape)
    length, angle, bend = rng.uniform(0.2, 0.6) * s, rng.uniform(0, np.pi), rng.uniform(-0.5, 0.5)
    start = rng.uniform(0.2, 0.8, 2) * shape
    t = np.linspace(0, 1, 16)[:, None]
    theta = angle + bend * t
    points = start + length * t * np.concatenate([np.sin(theta), np.cos(theta)], axis=1)
    alpha = np.zeros(shape, np.float32)
    _polyline(alpha, points)
    return ndimage.gaussian_filter(_thicken(alpha, int(rng.integers(1, 4))), 0.5)


def _crack(shape, rng):
    s = min(shape)
    alpha = np.zeros(shape, np.float32)
    starts = [rng.uniform(0.25, 0.75, 2) * shape]
    for branch in range(int(rng.integers(1, 4))):
        pos, angle = starts[rng.integers(len(starts))], rng.uniform(0, 2 * np.pi)
        points = [pos]
        for _ in range(int(rng.integers(8, 20))):
            angle += rng.normal(0, 0.5)
            points.append(points[-1] + rng.uniform(0.01, 0.03) * s * np.array([np.sin(angle), np.cos(angle)]))
        points = np.array(points)
        starts.extend(points[1:])
        _polyline(alpha, points)
    return ndimage.gaussian_filter(_thicken(alpha, int(rng.integers(1, 3))), 0.4)


def _ellipse(shape, rng, lo, hi):
    r = rng.uniform(lo, hi) * min(shape)
    center = rng.uniform(0.2, 0.8, 2) * shape
    rr, cc = draw.ellipse(center[0], center[1], r, r * rng.uniform(0.5, 1.0), shape=shape,
                          rotation=rng.uniform(-np.pi, np.pi))
    alpha = np.zeros(shape, np.float32)
    alpha[rr, cc] = 1.0
    return alpha, r


def _spot(shape, rng):
    alpha, r = _ellipse(shape, rng, 0.02, 0.08)
    return ndimage.gaussian_filter(alpha, max(0.5, 0.2 * r))


def _stain(shape, rng):
    region, r = _ellipse(shape, rng, 0.06, 0.18)
    noise = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 0.3 * r)
    blob = region * (noise > np.quantile(noise[region > 0], 0.3))
    return ndimage.gaussian_filter(blob.astype(np.float32), 0.15 * r)


def draw_defect(image: np.ndarray, rng: np.random.Generator, kind: str | None = None):
    """Returns (defective uint8 (H, W, 3) image, float32 (H, W) mask in {0, 1}, defect type)."""
    kind = kind or DEFECT_TYPES[rng.integers(len(DEFECT_TYPES))]
    shape = np.array(image.shape[:2])
    img = image.astype(np.float32)
    strength = rng.uniform(0.5, 1.0)
    if kind == "hole":
        alpha, r = _ellipse(shape, rng, 0.02, 0.06)
        core = ndimage.gaussian_filter(alpha, 0.8)
        rim = np.clip(ndimage.gaussian_filter(_thicken(alpha, max(3, int(0.4 * r))) - alpha, 1.0), 0, 1)
        img = img * (1 - 0.6 * rim[..., None]) + 255 * 0.6 * rim[..., None]
        alpha, target = np.maximum(core, rim), np.full(3, 10.0)
        img = img * (1 - core[..., None]) + target * core[..., None]
        return np.clip(img, 0, 255).astype(np.uint8), (alpha > 0.3).astype(np.float32), kind
    alpha = {"scratch": _scratch, "crack": _crack, "spot": _spot, "stain": _stain}[kind](tuple(shape), rng)
    alpha = np.clip(alpha / max(alpha.max(), 1e-6), 0, 1)
    if kind == "stain":
        target, strength = rng.uniform(40, 220, 3), rng.uniform(0.3, 0.6)
    elif kind == "crack":
        target = np.full(3, rng.uniform(0, 40))
    else:
        target = np.full(3, 255.0 if rng.random() < 0.5 else rng.uniform(0, 40))
    a = strength * alpha[..., None]
    img = img * (1 - a) + target * a
    return np.clip(img, 0, 255).astype(np.uint8), (alpha > 0.3).astype(np.float32), kind


@functools.lru_cache(maxsize=8)
def texture(name: str) -> np.ndarray:
    """A scikit-image bundled texture as uint8 RGB (cached)."""
    import skimage.data

    return np.asarray(images.to_rgb(Image.fromarray(getattr(skimage.data, name)())))


def _base(path: str) -> np.ndarray:
    if path.startswith("skimage:"):
        return texture(path.split(":", 1)[1])
    return images.load_image(path)


def random_view(base: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop (half to full side), random flip and 90-degree rotation, resized to ``size``."""
    h, w = base.shape[:2]
    side = int(rng.uniform(0.5, 1.0) * min(h, w))
    r, c = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = np.rot90(base[r:r + side, c:c + side], int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR))


@dataclasses.dataclass(frozen=True)
class SyntheticRecord:
    path: str          # a base image file, or "skimage:<texture>"
    label: int
    category: str
    defect: str
    key: int           # the example's index in the generator's seed sequence
    mask_path: None = None


@dataclasses.dataclass
class SyntheticSource(Source):
    """An AD ``Source`` whose examples are rendered from (seed, key) on ``load``."""

    seed: int = 0
    image_size: int = 256

    def decode(self, record: SyntheticRecord, size: int | None = None) -> dict:
        size = size or self.image_size
        rng = np.random.default_rng([self.seed, record.key])
        image = random_view(_base(record.path), rng, size)
        mask = np.zeros((size, size), np.float32)
        if record.label:
            image, mask, _ = draw_defect(image, rng, record.defect)
        return {"image": image, "label": record.label, "mask": mask, "has_mask": True}


def synthetic_source(root: str | None = None, split: str = "train", *, bases=TEXTURES + ("elpv",),
                     num_train: int = 200, num_test: int = 200, anomaly_fraction: float = 0.5,
                     image_size: int = 256, seed: int = 0, defect_types=DEFECT_TYPES) -> SyntheticSource:
    """``root`` is the ELPV folder used by the "elpv" base (None: the package's copy)."""
    check_split(split, ("train", "test"))
    unknown = [b for b in bases if b not in TEXTURES + ("elpv",)]
    if unknown:
        raise ValueError(f"unknown synthetic bases {unknown}; expected some of {TEXTURES + ('elpv',)}")
    unknown = [d for d in defect_types if d not in DEFECT_TYPES]
    if unknown or not defect_types:
        raise ValueError(f"synthetic defect_types {list(defect_types)}: expected one or more of {list(DEFECT_TYPES)}")
    split_id = 0 if split == "train" else 1
    rng = np.random.default_rng([seed, split_id])
    elpv_paths = [r.path for r in elpv.elpv_ad_source(root, split, seed=seed).records if r.label == 0] \
        if "elpv" in bases else []
    n = num_train if split == "train" else num_test
    n_bad = 0 if split == "train" else int(round(n * anomaly_fraction))
    labels = rng.permutation(np.arange(n) < n_bad)
    records = []
    for i, label in enumerate(labels):
        base = bases[rng.integers(len(bases))]
        path = elpv_paths[rng.integers(len(elpv_paths))] if base == "elpv" else f"skimage:{base}"
        defect = defect_types[rng.integers(len(defect_types))] if label else "good"
        records.append(SyntheticRecord(path, int(label), base, defect, key=split_id * 1_000_000_007 + i))
    return SyntheticSource(records, ["good", "anomalous"], task=ANOMALY, seed=seed, image_size=image_size)
