"""classification_metrics against scikit-learn, including classes absent from labels and predictions."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from ssm_jax.metrics import classification_metrics


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
