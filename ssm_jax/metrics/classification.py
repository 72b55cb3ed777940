"""Classification metrics: accuracy, macro precision / recall / F1, confusion matrix, per-class scores.

Undefined ratios (0 / 0) count as 0, as scikit-learn's default ``zero_division``. Macro averages run over the
classes that occur in ``labels`` or ``predictions`` -- scikit-learn's default ``labels=None`` -- so a class absent
from both (e.g. in a small evaluation split) neither counts as 0 nor as 1; ``per_class`` still lists all
``num_classes`` classes, the absent ones with zeros.
"""

from __future__ import annotations

import numpy as np


def _check_classes(values, name, num_classes):
    values = np.asarray(values)
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
