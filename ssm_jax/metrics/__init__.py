"""Evaluation metrics: classification (accuracy, macro P/R/F1, confusion) and anomaly detection (AU-ROC, AP,
F1-max, AU-PRO, mAD), in plain NumPy."""

from ssm_jax.metrics.anomaly import anomaly_metrics, anomaly_metrics_by_category, aupro
from ssm_jax.metrics.classification import binary_metrics, classification_metrics
from ssm_jax.metrics.columns import display_width, left_justified
from ssm_jax.metrics.curves import (FALSE_ALARM_RATES, auroc, average_precision, f1_max, flag_column, flag_rates,
                                    operating_point, operating_point_lines, operating_points, precision_recall_curve,
                                    roc_curve)

__all__ = [
    "FALSE_ALARM_RATES",
    "anomaly_metrics",
    "anomaly_metrics_by_category",
    "aupro",
    "auroc",
    "average_precision",
    "binary_metrics",
    "classification_metrics",
    "display_width",
    "f1_max",
    "flag_column",
    "flag_rates",
    "left_justified",
    "operating_point",
    "operating_point_lines",
    "operating_points",
    "precision_recall_curve",
    "roc_curve",
]
