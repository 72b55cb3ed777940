"""Fractal images from iterated function systems: a seeded, offline pretraining set with no natural images.

Formula-driven supervised pretraining (Kataoka et al., ACCV 2020, "Pre-training without Natural Images"): each class
is one iterated function system (IFS) of 2-4 affine maps, an image is its attractor drawn by the chaos game, and a
network pretrained to tell the classes apart starts a classifier on real data. It needs no download and no licence,
where ImageNet weights need both. A system's maps are drawn with a bounded sigma-factor (the sum over maps of
s1 + 2 s2, their singular values; Anderson and Farrell, WACV 2022), which keeps attractors neither dust nor blobs
without rendering and rejecting candidates. Each example perturbs its class's map parameters by up to
``perturbation`` / 2 (Nakamura et al., ECCV 2024) and draws the attractor at a random size and place, light on dark
or dark on light. Everything is a function of (seed, class, split, index).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ssm_jax.data.common import CLASSIFICATION, Source, check_split

MAPS = (2, 4)            # maps per system, inclusive
CHAINS, BURN_IN = 512, 12  # chaos-game walkers, and the first steps of each, dropped
POINTS_PER_PIXEL = 2     # points drawn per pixel of the image: 100,352 at 224 px
MAX_GAIN = 0.95          # no map stretches any direction by more than this after perturbation (contraction)


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def sample_system(rng: np.random.Generator) -> np.ndarray:
    """An IFS as (n, 2, 3) affine maps [A | b], n in ``MAPS``, with sigma-factor in [(5 + n) / 2, (6 + n) / 2]:
    singular values drawn, then scaled together to the drawn factor (redrawn while one would exceed ``MAX_GAIN``)."""
    n = int(rng.integers(MAPS[0], MAPS[1] + 1))
    target = rng.uniform((5 + n) / 2, (6 + n) / 2)
    for _ in range(1000):
        s = np.sort(rng.uniform(0.0, 1.0, (n, 2)), axis=1)[:, ::-1]
        s *= target / np.sum(s[:, 0] + 2 * s[:, 1])
        if s.max() <= MAX_GAIN:
            break
    else:  # unreachable in practice: the factor's range leaves room below the gain for every n in MAPS
        raise RuntimeError(f"no singular values for {n} maps with sigma-factor {target:.2f} under {MAX_GAIN}")
    maps = np.empty((n, 2, 3))
    for i in range(n):
        mirror = np.diag([1.0, rng.choice([-1.0, 1.0])])
        maps[i, :, :2] = _rotation(rng.uniform(0, 2 * np.pi)) @ np.diag(s[i]) @ _rotation(rng.uniform(0, 2 * np.pi)) \
            @ mirror
        maps[i, :, 2] = rng.uniform(-1.0, 1.0, 2)
    return maps


def perturb(maps: np.ndarray, rng: np.random.Generator, width: float) -> np.ndarray:
    """Every parameter moved by U(-width / 2, width / 2); a map that would then stretch past ``MAX_GAIN`` is scaled
    back to it, so the attractor stays bounded."""
    out = maps + rng.uniform(-width / 2, width / 2, maps.shape)
    gains = np.linalg.svd(out[:, :, :2], compute_uv=False)[:, 0]
    out[:, :, :2] *= np.minimum(1.0, MAX_GAIN / gains)[:, None, None]
    return out


def attractor(maps: np.ndarray, rng: np.random.Generator, steps: int) -> np.ndarray:
    """(2, steps * CHAINS) points (x row, y row) of the attractor: the chaos game, maps chosen with probability
    proportional to |det A| (even coverage), the first ``BURN_IN`` steps of each walker dropped."""
    weights = np.abs(np.linalg.det(maps[:, :, :2])) + 1e-3
    choice = np.searchsorted(np.cumsum(weights / weights.sum()), rng.random((BURN_IN + steps, CHAINS)))
    coef = maps.reshape(len(maps), 6)[np.minimum(choice, len(maps) - 1)].transpose(0, 2, 1)  # (steps, 6, CHAINS)
    x, y = rng.uniform(-1.0, 1.0, (2, CHAINS))
    points = np.empty((2, steps, CHAINS))
    for t in range(BURN_IN + steps):
        a, b, e, c, d, f = coef[t]
        x, y = a * x + b * y + e, c * x + d * y + f
        if t >= BURN_IN:
            points[0, t - BURN_IN], points[1, t - BURN_IN] = x, y
    return points.reshape(2, -1)


def draw(points: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (size, size, 3) grey image of (2, n) ``points``: scaled to fill 50-95 % of the side at a random place,
    the log of each pixel's count as brightness, then a random background and foreground level and polarity."""
    low, high = points.min(axis=1), points.max(axis=1)
    scale = rng.uniform(0.5, 0.95) * (size - 1) / max(float((high - low).max()), 1e-6)
    offset = rng.uniform(0, size - 1 - scale * (high - low)) + 0.5  # + 0.5: truncation below rounds
    rows, cols = ((points - low[:, None]) * scale + offset[:, None]).astype(np.int64)
    counts = np.bincount(rows * size + cols, minlength=size * size)
    density = np.log1p(counts.astype(np.float32)) / np.float32(np.log1p(counts.max()))
    background, foreground = rng.uniform(0.0, 0.35), rng.uniform(0.65, 1.0)
    if rng.random() < 0.5:
        background, foreground = foreground, background
    grey = np.round(255 * (background + (foreground - background) * density)).astype(np.uint8).reshape(size, size)
    return np.repeat(grey[..., None], 3, axis=2)


@dataclasses.dataclass(frozen=True)
class FractalRecord:
    path: str          # "fractal:<class>:<split>:<index>", for reports
    label: int
    category: str
    key: int           # the example's index within its class and split
    split: int
    subset: str = ""


@dataclasses.dataclass
class FractalSource(Source):
    """A classification ``Source`` whose examples are drawn from (seed, class, split, key) on ``load``."""

    seed: int = 0
    image_size: int = 224
    perturbation: float = 0.05

    def __post_init__(self):
        self._systems = {}

    def system(self, label: int) -> np.ndarray:
        """Class ``label``'s IFS (cached per process: grain workers each build their own)."""
        if label not in self._systems:
            self._systems[label] = sample_system(np.random.default_rng([self.seed, 0, label]))
        return self._systems[label]

    def decode(self, record: FractalRecord, size: int | None = None) -> dict:
        size = size or self.image_size
        rng = np.random.default_rng([self.seed, 1, record.label, record.split, record.key])
        maps = perturb(self.system(record.label), rng, self.perturbation)
        steps = -(-POINTS_PER_PIXEL * size * size // CHAINS)
        return {"image": draw(attractor(maps, rng, steps), size, rng), "label": record.label}


def fractal_source(root: str | None = None, split: str = "train", *, num_classes: int = 1000,
                   per_class_train: int = 100, per_class_test: int = 2, perturbation: float = 0.05,
                   image_size: int = 224, seed: int = 0) -> FractalSource:
    """``num_classes`` IFS classes with ``per_class_train`` / ``per_class_test`` examples each (the test split's are
    other draws of the same classes). ``root`` is unused: nothing is read from disk."""
    check_split(split, ("train", "test"))
    if num_classes < 2 or per_class_train < 1 or per_class_test < 1:
        raise ValueError(f"fractal source: num_classes={num_classes} (expected >= 2), per_class_train="
                         f"{per_class_train} and per_class_test={per_class_test} (expected >= 1)")
    if not 0 <= perturbation < 1:
        raise ValueError(f"fractal source: perturbation={perturbation}; expected a width in [0, 1)")
    split_id, per_class = (0, per_class_train) if split == "train" else (1, per_class_test)
    names = [f"ifs_{c:04d}" for c in range(num_classes)]
    records = [FractalRecord(f"fractal:{c}:{split}:{k}", c, names[c], k, split_id)
               for c in range(num_classes) for k in range(per_class)]
    return FractalSource(records, names, task=CLASSIFICATION, seed=seed, image_size=image_size,
                         perturbation=perturbation)
