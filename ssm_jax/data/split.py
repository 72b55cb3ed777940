"""Seeded stratified train/test splits, with the sizes of MemoryMamba's Table 1 (paper 000, sec. 5.1).

Table 1 gives (train, test) = Aluminum (277, 123), GC10 (1,834, 458), MT (1,878, 810), NEU (228, 3,372).
When a dataset on disk has exactly train + test images the sizes are met exactly; otherwise (NEU-CLS has
1,800 images, MT 1,344, i.e. half the table's totals) they are applied as the ratio test / (train + test).
NEU's ratio is as printed in the paper: 6.3 % train, 93.7 % test.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

PAPER_SPLITS = {"aluminum": (277, 123), "gc10": (1834, 458), "mt": (1878, 810), "neu": (228, 3372)}


def _quotas(counts: np.ndarray, n_test: int) -> np.ndarray:
    """Per-class test counts summing to ``n_test``, proportional to ``counts`` (largest remainder)."""
    exact = counts * n_test / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: n_test - quota.sum()]] += 1
    return quota


def stratified_split(labels: Sequence[int], test_fraction: float | None = None, *,
                     sizes: tuple[int, int] | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Returns sorted (train_indices, test_indices), each class split in proportion.

    Give either ``test_fraction`` in [0, 1] or ``sizes=(n_train, n_test)``; sizes that do not add up to
    ``len(labels)`` are used as a ratio. The same labels and seed always give the same split.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if (test_fraction is None) == (sizes is None):
        raise ValueError("give exactly one of test_fraction or sizes")
    if sizes is not None:
        n_train, n_test = sizes
        test_fraction = n_test / (n_train + n_test)
        n_test = n_test if n_train + n_test == n else int(round(n * test_fraction))
    else:
        if not 0.0 <= test_fraction <= 1.0:
            raise ValueError(f"test_fraction {test_fraction} not in [0, 1]")
        n_test = int(round(n * test_fraction))
    classes, inverse = np.unique(labels, return_inverse=True)
    quota = _quotas(np.bincount(inverse, minlength=len(classes)), n_test) if n else np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    test = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        test.append(rng.permutation(members)[: quota[c]])
    test = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(n), test)
    return train, test


def take_split(items: Sequence, labels: Sequence[int], split: str, *, test_fraction: float | None = None,
               sizes: tuple[int, int] | None = None, seed: int = 0) -> list:
    """The ``split`` ("train", "test" or "all") subset of ``items`` under ``stratified_split``."""
    if split == "all":
        return list(items)
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r} not supported; expected 'train', 'test' or 'all'")
    train, test = stratified_split(labels, test_fraction, sizes=sizes, seed=seed)
    return [items[i] for i in (train if split == "train" else test)]
