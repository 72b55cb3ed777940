"""Classification metrics: accuracy, macro precision / recall / F1, confusion matrix, per-class scores, and the
two-group view of ordered classes (``binary_metrics``: e.g. ELPV's defect probabilities as functional / defective).

Undefined ratios (0 / 0) count as 0, as scikit-learn's default ``zero_division``. Macro averages run over the
classes that occur in ``labels`` or ``predictions`` -- scikit-learn's default ``labels=None`` -- so a class absent
from both (e.g. in a small evaluation split) neither counts as 0 nor as 1; ``per_class`` still lists all
``num_classes`` classes, the absent ones with zeros.
"""

from __future__ import annotations

import numpy as np


def _check_classes(values, name, num_classes):
    values = np.asarray(values)
    values = values.astype(np.int64) if values.dtype == bool else values  # two classes as False / True
    if values.ndim != 1:
        hint = " (take the argmax of logits first)" if name == "predictions" and values.ndim == 2 else ""
        raise ValueError(f"{name} must have shape (N,){hint}, got {values.shape}")
    if values.size and (not np.issubdtype(values.dtype, np.number) or np.any(values != np.round(values))):
        raise ValueError(f"{name} must be integer class indices")
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        found = f"[{values.min()}, {values.max()}]"
        raise ValueError(f"{name} must lie in [0, num_classes) = [0, {num_classes}), got values in {found}")
    return values.astype(np.int64)


def _ratio(numerator, denominator):
    return np.divide(numerator, denominator, out=np.zeros(numerator.shape), where=denominator > 0)


def classification_metrics(labels, predictions, num_classes):
    """Metrics of integer predictions (N,) against labels (N,) over classes 0..num_classes-1.

    Returns ``acc``, macro ``precision``, ``recall``, ``f1`` (floats), ``confusion`` (num_classes x num_classes
    int64, rows = true class, columns = predicted) and ``per_class``: arrays ``precision``, ``recall``, ``f1``
    and ``support`` (number of true samples) of length num_classes.
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
    num_classes = int(num_classes)
    labels = _check_classes(labels, "labels", num_classes)
    predictions = _check_classes(predictions, "predictions", num_classes)
    if labels.shape != predictions.shape:
        raise ValueError(f"predictions must have the shape of labels {labels.shape}, got {predictions.shape}")
    if labels.size == 0:
        raise ValueError("labels and predictions are empty")
    confusion = np.bincount(labels * num_classes + predictions, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)
    tp = np.diag(confusion)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)
    present = (support + predicted) > 0
    return {
        "acc": float(tp.sum() / labels.size),
        "precision": float(precision[present].mean()),
        "recall": float(recall[present].mean()),
        "f1": float(f1[present].mean()),
        "confusion": confusion,
        "per_class": {"precision": precision, "recall": recall, "f1": f1, "support": support},
    }


def binary_metrics(labels, predictions, num_classes, positive_from):
    """Classes ``positive_from`` .. num_classes-1 as one positive group and the rest as negative: accuracy and the
    positive group's precision, recall and F1 when labels and predictions are merged into the two groups. For
    ordered classes (ELPV's defect probabilities 0, 1/3, 2/3, 1: ``positive_from=2`` is "p >= 0.5 is defective"),
    so a 4-class model is comparable with papers that report the 2-class task; also ``num_positive`` true ones."""
    if not 1 <= positive_from < num_classes:
        raise ValueError(f"positive_from must lie in [1, num_classes) = [1, {num_classes}) so that both groups have "
                         f"a class, got {positive_from}")
    labels = _check_classes(labels, "labels", num_classes)
    predictions = _check_classes(predictions, "predictions", num_classes)
    groups = [(values >= positive_from).astype(np.int64) for values in (labels, predictions)]
    m = classification_metrics(*groups, 2)
    return {"acc": m["acc"], **{k: float(m["per_class"][k][1]) for k in ("precision", "recall", "f1")},
            "num_positive": int(m["per_class"]["support"][1])}
