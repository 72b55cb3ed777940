"""classification_metrics and binary_metrics against scikit-learn, including classes absent from both sides."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from ssm_jax.metrics import binary_metrics, classification_metrics


@pytest.mark.parametrize("seed, n, k, used", [(0, 50, 4, 4), (1, 200, 7, 5), (2, 5, 6, 3), (3, 1, 3, 3)])
def test_matches_sklearn(seed, n, k, used):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, used, n)  # classes >= used never occur
    predictions = np.where(rng.random(n) < 0.6, labels, rng.integers(0, used, n))
    result = classification_metrics(labels, predictions, k)
    assert result["acc"] == pytest.approx(accuracy_score(labels, predictions), abs=1e-12)
    # Macro over classes present in labels or predictions: sklearn's default labels=None.
    p, r, f, _ = precision_recall_fscore_support(labels, predictions, average="macro", zero_division=0)
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx((p, r, f), abs=1e-12)
    np.testing.assert_array_equal(result["confusion"], confusion_matrix(labels, predictions, labels=range(k)))
    assert result["confusion"].shape == (k, k) and result["confusion"].dtype == np.int64
    p, r, f, s = precision_recall_fscore_support(labels, predictions, labels=range(k), average=None, zero_division=0)
    per_class = result["per_class"]
    np.testing.assert_allclose(per_class["precision"], p, atol=1e-12)
    np.testing.assert_allclose(per_class["recall"], r, atol=1e-12)
    np.testing.assert_allclose(per_class["f1"], f, atol=1e-12)
    np.testing.assert_array_equal(per_class["support"], s)


def test_absent_class_does_not_enter_macro_average():
    result = classification_metrics([0, 0, 1, 1], [0, 0, 1, 1], num_classes=3)
    assert result["f1"] == result["precision"] == result["recall"] == result["acc"] == 1.0
    assert result["per_class"]["f1"].tolist() == [1.0, 1.0, 0.0]


def test_boolean_labels_are_two_classes():
    got, ints = classification_metrics([True, False, True], [True, True, False], 2), classification_metrics(
        [1, 0, 1], [1, 1, 0], 2)
    assert got["acc"] == ints["acc"] == pytest.approx(1 / 3) and got["f1"] == ints["f1"]
    np.testing.assert_array_equal(got["confusion"], ints["confusion"])


def test_class_never_predicted_counts_zero():
    result = classification_metrics([0, 1], [0, 0], num_classes=2)
    assert result["precision"] == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert result["recall"] == pytest.approx(0.5)
    assert result["f1"] == pytest.approx((2 / 3 + 0) / 2)


@pytest.mark.parametrize(
    "labels, predictions, k, match",
    [
        ([0, 3], [0, 1], 3, r"labels must lie in \[0, num_classes\)"),
        ([0, 1], [0, -1], 3, "predictions must lie"),
        ([0, 1], [0, 1, 1], 3, "shape of labels"),
        ([0, 1], [[0.1, 0.9], [0.8, 0.2]], 2, "argmax"),
        ([0, 1.5], [0, 1], 3, "integer class indices"),
        ([], [], 3, "empty"),
        ([0, 1], [0, 1], 0, "num_classes must be a positive integer"),
    ],
)
def test_bad_inputs(labels, predictions, k, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(labels, predictions, k)


@pytest.mark.parametrize("seed, n, k, positive_from", [(0, 80, 4, 2), (1, 200, 4, 1), (2, 30, 6, 5), (3, 7, 2, 1)])
def test_binary_groups_match_sklearn_on_merged_labels(seed, n, k, positive_from):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    predictions = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))
    result = binary_metrics(labels, predictions, k, positive_from)
    truth, guess = labels >= positive_from, predictions >= positive_from
    assert result["acc"] == pytest.approx(accuracy_score(truth, guess), abs=1e-12)
    p, r, f, s = precision_recall_fscore_support(truth, guess, labels=[True], average=None, zero_division=0)
    assert (result["precision"], result["recall"], result["f1"]) == pytest.approx((p[0], r[0], f[0]), abs=1e-12)
    assert result["num_positive"] == s[0]


def test_binary_counts_confusions_within_a_group_as_right():
    # ELPV-like: 0 and 1/3 functional, 2/3 and 1 defective; 1/3 called 0 and 1 called 2/3 are right in two groups
    result = binary_metrics([1, 3, 0, 2], [0, 2, 3, 1], num_classes=4, positive_from=2)
    assert result["acc"] == 0.5 and result["precision"] == result["recall"] == 0.5 and result["num_positive"] == 2


@pytest.mark.parametrize("positive_from", [0, 4, -1])
def test_binary_needs_a_class_in_each_group(positive_from):
    with pytest.raises(ValueError, match=r"positive_from must lie in \[1, num_classes\)"):
        binary_metrics([0, 1], [0, 1], 4, positive_from)
