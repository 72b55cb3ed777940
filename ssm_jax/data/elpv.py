"""ELPV (Buerhop-Lutz et al., Deitsch et al.): 2,624 electroluminescence solar-cell images, 300x300 8-bit
grayscale, shipped offline by the ``elpv-dataset`` package. The real default dataset of the project.

The package's ``elpv_dataset.utils.load_dataset()`` returns (images uint8 (2624, 300, 300), defect
probabilities float64 in {0, 1/3, 2/3, 1}, cell types "mono"/"poly") and decodes every image at once
(236 MB). We read the same ``labels.csv`` (lines ``images/cellNNNN.png <probability> <type>``) and decode
lazily in the input pipeline. ``root=None`` uses the package's data folder; another root must hold the
same ``labels.csv`` + ``images/``.

Views:
* classification (``elpv_source``): probability 0, 1/3, 2/3, 1 -> class 0..3; split 75/25 (``test_fraction``)
  stratified by class and cell type, seeded; each record's ``subset`` is its cell type, so the evaluation also
  scores mono and poly cells apart.
* anomaly detection (``elpv_ad_source``): functional cells (p = 0) are normal, p >= 1/3 anomalous (a 1/3
  cell was judged "possibly defective" by the annotators and counts as an anomaly). The normals are split
  by a seeded draw stratified by cell type: train = (1 - test_normal_fraction) of them, test = the held-out
  normals + every defective cell. No pixel masks exist (``has_mask`` is False for anomalous cells).
"""

from __future__ import annotations

import os

import numpy as np

from ssm_jax.data.common import ANOMALY, Record, Source, check_split, require_dir, require_file
from ssm_jax.data.split import stratified_split

CLASS_NAMES = ("p0", "p1_3", "p2_3", "p1")
NUM_IMAGES = 2624


def package_root() -> str:
    import elpv_dataset

    return os.path.join(os.path.dirname(elpv_dataset.__file__), "data")


def read_labels(root: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(image paths, class ids 0..3, cell types) from ``root/labels.csv``."""
    root = package_root() if root is None else root
    require_dir(root, "the ELPV folder with labels.csv and images/")
    csv_path = require_file(os.path.join(root, "labels.csv"), "lines 'images/cellNNNN.png <probability> <type>'")
    paths, probs, types = [], [], []
    with open(csv_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 3:
                raise ValueError(f"{csv_path!r} line {n}: {line.strip()!r}; expected '<path> <probability> <type>'")
            paths.append(os.path.join(root, parts[0]))
            probs.append(float(parts[1]))
            types.append(parts[2])
    classes = np.rint(np.asarray(probs) * 3).astype(np.int64)
    if not np.allclose(classes / 3, probs, atol=1e-3):
        raise ValueError(f"{csv_path!r}: probabilities must be 0, 1/3, 2/3 or 1")
    return paths, classes, np.asarray(types)


def _strata(classes: np.ndarray, types: np.ndarray) -> np.ndarray:
    return classes * 2 + (types == "poly")


def elpv_source(root: str | None = None, split: str = "train", *, test_fraction: float = 0.25,
                seed: int = 0, strict: bool = False) -> Source:
    check_split(split, ("train", "test", "all"))
    paths, classes, types = read_labels(root)
    records = [Record(p, int(c), CLASS_NAMES[c], subset=str(t)) for p, c, t in zip(paths, classes, types)]
    if split != "all":
        train, test = stratified_split(_strata(classes, types), test_fraction, seed=seed)
        records = [records[i] for i in (train if split == "train" else test)]
    return Source(records, list(CLASS_NAMES), strict=strict)


def elpv_ad_source(root: str | None = None, split: str = "train", *, test_normal_fraction: float = 0.25,
                   seed: int = 0, strict: bool = False) -> Source:
    check_split(split, ("train", "test"))
    paths, classes, types = read_labels(root)
    normal = np.flatnonzero(classes == 0)
    train, test = stratified_split(types[normal], test_normal_fraction, seed=seed)
    if split == "train":
        chosen = normal[train]
    else:
        chosen = np.sort(np.concatenate([normal[test], np.flatnonzero(classes > 0)]))
    records = [Record(paths[i], int(classes[i] > 0), str(types[i]), CLASS_NAMES[classes[i]] if classes[i] else "good")
               for i in chosen]
    return Source(records, ["good", "anomalous"], task=ANOMALY, strict=strict)
