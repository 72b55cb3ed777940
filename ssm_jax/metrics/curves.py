"""Ranking metrics of binary scores: ROC and PR curves, AU-ROC, AP, F1-max.

Exact and sorting-based (one sort, O(n log n)): tied scores form one threshold, accepted or rejected as a
whole, so the results equal scikit-learn's ``roc_auc_score``, ``average_precision_score`` and the maximum F1
over ``precision_recall_curve`` up to rounding. A sample is predicted positive when its score >= threshold.
"""

from __future__ import annotations

import numpy as np


def cumulative_at_thresholds(scores, weights):
    """Distinct scores in descending order and, per weight array, its sum over samples scoring >= each.

    One sort serves every weight array (e.g. positives, negatives and AU-PRO region weights of the same pixels).
    """
    order = np.argsort(scores)[::-1]
    ranked = scores[order]
    ends = np.append(np.flatnonzero(ranked[1:] != ranked[:-1]), ranked.size - 1)
    return ranked[ends], [np.cumsum(w[order])[ends] for w in weights]


def binary_counts(labels, scores):
    """(thresholds, true positives, false positives) at each distinct score, descending."""
    positive = labels.astype(np.int64)
    thresholds, (tps, fps) = cumulative_at_thresholds(scores, [positive, 1 - positive])
    return thresholds, tps, fps


def auroc_from_counts(tps, fps):
    """Trapezoid area under the ROC curve through (0, 0) and every threshold."""
    tpr = np.concatenate([[0.0], tps / tps[-1]])
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)


def ap_from_counts(tps, fps):
    """Step-wise average precision: sum over thresholds of (recall increase) x precision."""
    return float(np.sum(np.diff(tps, prepend=0) * (tps / (tps + fps))) / tps[-1])


def f1_from_counts(tps, fps):
    """F1 = 2TP / (2TP + FP + FN) at each threshold of cumulative counts (the last threshold takes everything)."""
    return 2 * tps / (tps + fps + tps[-1])


def f1max_from_counts(tps, fps):
    """Largest F1 over all thresholds."""
    return float(np.max(f1_from_counts(tps, fps)))


def check_binary(labels, scores, labels_name="labels", scores_name="scores"):
    """Validated (bool labels, float scores) of equal shape; labels need both classes, scores must be finite."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores_name} must have the shape of {labels_name} {labels.shape}, got {scores.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{labels_name} must be binary (0/1 or bool), got values {np.unique(labels)[:10]}")
    labels = labels.astype(bool)
    if labels.all() or not labels.any():
        raise ValueError(f"{labels_name} must contain both classes (0 = normal, 1 = anomalous), got only one")
    if not np.issubdtype(scores.dtype, np.number) or not np.isfinite(scores).all():
        raise ValueError(f"{scores_name} must be finite numbers")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    return labels.ravel(), scores.ravel()


def roc_curve(labels, scores):
    """(fpr, tpr, thresholds) starting at (0, 0) with threshold +inf; one point per distinct score."""
    thresholds, tps, fps = binary_counts(*check_binary(labels, scores))
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    tpr = np.concatenate([[0.0], tps / tps[-1]])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def precision_recall_curve(labels, scores):
    """(precision, recall, thresholds) with one point per distinct score, thresholds descending."""
    thresholds, tps, fps = binary_counts(*check_binary(labels, scores))
    return tps / (tps + fps), tps / tps[-1], thresholds


def auroc(labels, scores):
    """Area under the ROC curve."""
    return auroc_from_counts(*binary_counts(*check_binary(labels, scores))[1:])


def average_precision(labels, scores):
    """Average precision (step-wise, no interpolation), as scikit-learn's ``average_precision_score``."""
    return ap_from_counts(*binary_counts(*check_binary(labels, scores))[1:])


def operating_point(labels, scores, max_fpr):
    """The threshold that catches the most positives while flagging at most ``max_fpr`` of the negatives, as
    {threshold, recall, fpr} (flag score >= threshold): how an inspection line picks its cut from validation images.
    threshold is None, with recall and fpr 0, when only flagging nothing qualifies."""
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be a rate in [0, 1], got {max_fpr}")
    fpr, tpr, thresholds = roc_curve(labels, scores)
    within = np.flatnonzero(fpr <= max_fpr)
    best = within[np.argmax(tpr[within])]  # the first, highest cut of the most recall: the fewest false alarms
    return {"threshold": None if best == 0 else float(thresholds[best]), "recall": float(tpr[best]),
            "fpr": float(fpr[best])}


FALSE_ALARM_RATES = (0.01, 0.05, 0.1)  # operating points reported: at most this share of the negatives flagged


def operating_points(labels, scores, rates=FALSE_ALARM_RATES) -> dict:
    """{"1%": operating_point(labels, scores, 0.01), ...} for each of ``rates``; each None when the labels hold one
    class, where no cut is defined."""
    both = np.unique(np.asarray(labels)).size == 2
    return {f"{100 * r:g}%": operating_point(labels, scores, r) if both else None for r in rates}


def flag_column(scores, threshold: float) -> dict:
    """{"flagged": 1 where a score reaches ``threshold``, else 0} when flagging is on (``threshold`` > 0), else {}:
    the column a results CSV gains."""
    return {"flagged": (np.asarray(scores) >= threshold).astype(np.int64)} if threshold else {}


def flag_rates(scores, positive, threshold: float) -> dict:
    """{threshold, recall, fpr} of flagging ``scores >= threshold``: the share of the positives flagged and of the
    negatives (None for a group the labels lack)."""
    flagged, positive = np.asarray(scores) >= threshold, np.asarray(positive, bool)
    share = [float(flagged[group].mean()) if group.any() else None for group in (positive, ~positive)]
    return {"threshold": threshold, "recall": share[0], "fpr": share[1]}


def operating_point_lines(points: dict, at_flag: dict | None, score: str, digits: str = ".4f") -> list[str]:
    """Report lines of ``operating_points``' cuts on ``score`` (its name in the text, e.g. "p(p1)" or "score") and,
    given, of ``flag_rates``' at the configured threshold; thresholds printed with format ``digits``."""
    lines = []
    for rate, point in points.items():
        if point is not None:
            cut = "nothing" if point["threshold"] is None else f"{score} >= {point['threshold']:{digits}}"
            lines.append(f"  at most {rate} false alarms: flag {cut}: recall {point['recall']:.4f}, "
                         f"false alarms {point['fpr']:.4f}")
    if at_flag is not None:
        at = {k: "-" if at_flag[k] is None else f"{at_flag[k]:.4f}" for k in ("recall", "fpr")}
        lines.append(f"  at eval.flag_threshold: flag {score} >= {at_flag['threshold']:{digits}}: "
                     f"recall {at['recall']}, false alarms {at['fpr']}")
    return lines


def f1_max(labels, scores):
    """Maximum F1 score over all thresholds."""
    return f1max_from_counts(*binary_counts(*check_binary(labels, scores))[1:])
