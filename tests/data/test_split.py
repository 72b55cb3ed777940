import numpy as np
import pytest

from ssm_jax.data import PAPER_SPLITS, stratified_split


def test_stratified_fraction_and_seed():
    labels = np.repeat(np.arange(4), [100, 40, 20, 8])
    train, test = stratified_split(labels, 0.25, seed=3)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(labels)
    assert np.bincount(labels[test]).tolist() == [25, 10, 5, 2]
    again = stratified_split(labels, 0.25, seed=3)
    assert all((a == b).all() for a, b in zip((train, test), again))
    assert not np.array_equal(stratified_split(labels, 0.25, seed=4)[1], test)


def test_sizes_exact_when_total_matches_else_ratio():
    labels = np.repeat(np.arange(4), 100)
    train, test = stratified_split(labels, sizes=PAPER_SPLITS["aluminum"], seed=0)
    assert (len(train), len(test)) == (277, 123)
    labels = np.repeat(np.arange(6), 300)  # NEU-CLS: 1,800 images, the paper's 228/3,372 as a ratio
    train, test = stratified_split(labels, sizes=PAPER_SPLITS["neu"], seed=0)
    assert len(train) == round(1800 * 228 / 3600) and np.bincount(labels[train]).tolist() == [19] * 6


def test_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        stratified_split([0, 1], 0.5, sizes=(1, 1))
    with pytest.raises(ValueError, match="not in"):
        stratified_split([0, 1], 1.5)
