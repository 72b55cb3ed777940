"""AU-ROC, AP, F1-max, the ROC curve and the operating point at a false-positive rate against scikit-learn and a
brute-force float64 count, on random scores with many ties."""

import numpy as np
import pytest
from sklearn import metrics as skm

from ssm_jax.metrics import (auroc, average_precision, f1_max, flag_rates, operating_point, precision_recall_curve,
                             roc_curve)

CASES = [(0, 20, 0.5, None), (1, 300, 0.1, 5), (2, 1000, 0.7, 20), (3, 5000, 0.02, None), (4, 2, 0.5, None)]


def _data(seed, n, positive_rate, levels):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < positive_rate
    labels[:2] = [True, False]  # both classes
    scores = rng.normal(size=n) + labels
    if levels is not None:  # quantise: heavy ties, also across classes
        scores = np.round(scores * levels / 4) / levels
    return labels.astype(int), scores.astype(np.float32)


def _sklearn_f1_max(labels, scores):
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=precision + recall > 0)
    return f1.max()


@pytest.mark.parametrize("seed, n, positive_rate, levels", CASES)
def test_matches_sklearn(seed, n, positive_rate, levels):
    labels, scores = _data(seed, n, positive_rate, levels)
    assert auroc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-9)
    assert average_precision(labels, scores) == pytest.approx(skm.average_precision_score(labels, scores), abs=1e-9)
    assert f1_max(labels, scores) == pytest.approx(_sklearn_f1_max(labels, scores), abs=1e-9)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    ref_fpr, ref_tpr, ref_thresholds = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, ref_tpr, atol=1e-12)
    np.testing.assert_array_equal(thresholds[1:], ref_thresholds[1:])


def _brute_operating_point(labels, scores, max_fpr):
    """Every distinct score tried as the cut by counting (flag score >= t): the most recall within max_fpr, and of
    equal recalls the highest cut (the fewest false alarms)."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, np.float64)
    best = {"threshold": None, "recall": 0.0, "fpr": 0.0}
    for t in np.unique(scores)[::-1]:  # descending: a tie in recall keeps the higher cut
        flagged = scores >= t
        fpr, recall = flagged[~labels].mean(), flagged[labels].mean()
        if fpr <= max_fpr and recall > best["recall"]:
            best = {"threshold": float(t), "recall": recall, "fpr": fpr}
    return best


@pytest.mark.parametrize("seed, n, positive_rate, levels", CASES)
@pytest.mark.parametrize("max_fpr", [0.0, 0.01, 0.05, 0.1, 0.5, 1.0])
def test_operating_point_by_counting_and_sklearn(seed, n, positive_rate, levels, max_fpr):
    labels, scores = _data(seed, n, positive_rate, levels)
    got = operating_point(labels, scores, max_fpr)
    ref = _brute_operating_point(labels, scores, max_fpr)
    assert got == pytest.approx(ref, abs=1e-12) if ref["threshold"] is not None else got == ref
    assert got["recall"] == pytest.approx(_sklearn_recall_within(labels, scores, max_fpr), abs=1e-12)


def _sklearn_recall_within(labels, scores, max_fpr):
    fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    return tpr[fpr <= max_fpr].max()


def test_operating_point_known_values_and_bad_rate():
    labels, scores = [0, 0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9, 0.8, 0.95]
    assert operating_point(labels, scores, 0.0) == {"threshold": 0.95, "recall": 0.5, "fpr": 0.0}
    assert operating_point(labels, scores, 0.25) == {"threshold": 0.8, "recall": 1.0, "fpr": 0.25}
    assert operating_point([0, 1], [0.5, 0.5], 0.5) == {"threshold": None, "recall": 0.0, "fpr": 0.0}  # a tie
    with pytest.raises(ValueError, match=r"max_fpr must be a rate in \[0, 1\], got 5"):
        operating_point(labels, scores, 5)


def test_precision_recall_curve_points():
    precision, recall, thresholds = precision_recall_curve([0, 1, 1, 0], [0.1, 0.9, 0.5, 0.5])
    np.testing.assert_allclose(thresholds, [0.9, 0.5, 0.1])
    np.testing.assert_allclose(precision, [1.0, 2 / 3, 0.5])
    np.testing.assert_allclose(recall, [0.5, 1.0, 1.0])


def test_known_values():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied
    assert average_precision([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert average_precision([1, 1, 0], [3, 2, 1]) == 1.0  # integer scores accepted
    assert f1_max([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "labels, scores, match",
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "both classes"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "binary"),
        ([0, 1, 1], [0.1, 0.2], r"scores must have the shape of labels \(3,\)"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "finite"),
    ],
)
def test_bad_inputs(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        auroc(labels, scores)


def test_flag_rates_flag_scores_at_the_threshold():
    scores, positive = np.array([0.1, 0.2, 0.0, 0.9, 0.5]), np.array([0, 0, 1, 1, 1])
    assert flag_rates(scores, positive, 0.5) == {"threshold": 0.5, "recall": pytest.approx(2 / 3), "fpr": 0.0}
    assert flag_rates(scores, positive, 0.15) == {"threshold": 0.15, "recall": pytest.approx(2 / 3), "fpr": 0.5}
    assert flag_rates(scores[2:], positive[2:], 0.5)["fpr"] is None  # no negatives to flag
