import numpy as np

from ssm_jax.data import elpv, get_source


def test_labels_counts(elpv_labels):
    paths, classes, types = elpv_labels
    assert len(paths) == elpv.NUM_IMAGES == 2624
    assert np.bincount(classes).tolist() == [1508, 295, 106, 715]
    assert set(types) == {"mono", "poly"}


def test_classification_split_is_stratified_and_seeded(elpv_labels):
    _, classes, _ = elpv_labels
    train, test = get_source("elpv", None, "train"), get_source("elpv", None, "test")
    assert len(train) + len(test) == 2624 and len(test) == 656
    assert not {r.path for r in train} & {r.path for r in test}
    assert np.abs(np.bincount(test.labels) / np.bincount(classes) - 0.25).max() < 0.01
    assert [r.path for r in get_source("elpv", None, "test", seed=0)] == [r.path for r in test]
    assert [r.path for r in get_source("elpv", None, "test", seed=1)] != [r.path for r in test]


def test_classification_records_carry_the_cell_type(elpv_labels):
    paths, _, types = elpv_labels
    type_of = dict(zip(paths, types))
    test = get_source("elpv", None, "test")
    assert all(r.subset == type_of[r.path] for r in test)
    mono = sum(r.subset == "mono" for r in test)
    assert abs(mono / len(test) - np.mean(types == "mono")) < 0.01  # the split is stratified by type too


def test_anomaly_view(elpv_labels):
    _, classes, _ = elpv_labels
    train, test = get_source("elpv_ad", None, "train"), get_source("elpv_ad", None, "test")
    assert set(train.labels) == {0} and len(train) == 1508 - 377
    assert test.labels.sum() == (classes > 0).sum() and (test.labels == 0).sum() == 377
    assert not {r.path for r in train} & {r.path for r in test}
    ex = test.load(next(r for r in test if r.label), size=32)
    assert ex["image"].shape == (32, 32, 3) and not ex["has_mask"]
