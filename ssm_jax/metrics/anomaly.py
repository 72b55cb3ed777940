"""Anomaly detection metrics of MambaAD / anomalib: image- and pixel-level AU-ROC, AP, F1-max, AU-PRO, mAD.

All are fractions in [0, 1] (the papers print percentages). Pixel-level metrics pool the pixels of all images.
AU-PRO follows the MVTec AD definition (Bergmann et al.): ground-truth regions are the 8-connected components
of each mask; at a threshold, PRO is the mean over all regions of the fraction of the region's pixels predicted
anomalous, and FPR is the fraction of all normal pixels predicted anomalous; the PRO-over-FPR curve is
integrated (trapezoids) up to FPR 0.3, with PRO interpolated linearly at 0.3, and divided by 0.3. Every
metric here is exact: the same as taking every distinct score as a threshold, curves starting from (0, 0).

Benchmarks (MambaAD and the other ADer models) report ``anomaly_metrics_by_category``: each category scored
on its own, then the plain mean over categories. ADer's evaluator (``util/metric.py``, ``Evaluator.run`` and
``cal_pro_score``; MambaAD's configs pass ``max_step_aupro=100``, the function's default is 200) is exact for
image AU-ROC / AP / F1-max (scikit-learn, all thresholds) and pixel AU-ROC / AP, and approximates two:
* pixel F1-max (``mF1_max_px``) is the best F1 on a fixed grid of 21 thresholds 0, 0.05, ..., 1 applied as
  ``map > t`` to the category's min-max normalised maps, not over all thresholds, so it is <= ours;
* pixel AU-PRO (``mAUPRO_px``) uses 100 thresholds evenly spaced from the category's map minimum
  (inclusive) to its maximum (exclusive), keeps the points with FPR < 0.3, min-max rescales their FPRs to
  [0, 1] and integrates (``sklearn.metrics.auc``) without a point at FPR 0 or 0.3 -- the rescaling stretches
  whatever FPR span the coarse thresholds happen to cover, so its numbers differ from the exact area.

Memory is O(pixels) with a small constant and nothing of size pixels x thresholds: one sorted copy of the
maps plus arrays over the anomalous pixels (see ``_pixel_counts``); measured 13 bytes per pixel beyond the
inputs for float32 maps, 1.4 GiB and 5 s on one CPU core for 1,700 maps of 256 x 256.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from ssm_jax.metrics.curves import (
    ap_from_counts,
    auroc_from_counts,
    binary_counts,
    check_binary,
    f1_from_counts,
    f1max_from_counts,
)

FPR_LIMIT = 0.3
IMAGE_METRICS = ("i_auroc", "i_ap", "i_f1max")
PIXEL_METRICS = ("p_auroc", "p_ap", "p_f1max", "p_aupro")
MAD_METRICS = IMAGE_METRICS + PIXEL_METRICS


def _region_weights(masks):
    """Weight 1 / (region size * number of regions) of each anomalous pixel, in ``maps[masks]`` order."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connectivity inside each image, none across images
    regions, num_regions = ndimage.label(masks, structure=structure)
    inside = regions[masks]
    return 1.0 / (np.bincount(inside)[inside] * num_regions)


def _area_up_to(x, y, limit):
    """Trapezoid area under y(x) for x in [0, limit], y interpolated at limit; x non-decreasing from 0."""
    k = np.searchsorted(x, limit, side="right")  # x[:k] <= limit < x[k]
    area = np.sum(np.diff(x[:k]) * (y[1:k] + y[: k - 1])) / 2
    if k < x.size:
        y_limit = y[k - 1] + (y[k] - y[k - 1]) * (limit - x[k - 1]) / (x[k] - x[k - 1])
        area += (limit - x[k - 1]) * (y[k - 1] + y_limit) / 2
    return float(area)


def _pixel_counts(masks, maps):
    """True positives, false positives and summed region overlaps (PRO) at the thresholds where curves bend, and
    those thresholds (a pixel is predicted anomalous where its map value reaches one).

    Between two consecutive distinct scores of anomalous pixels only false positives change, so the ROC and PRO
    curves run flat there, those thresholds add nothing to AP and have a lower F1 than the run's first one.
    Each such run is kept by its two ends (the anomalous score, and the next larger map value above the next
    anomalous score), which leaves every metric exact with O(anomalous pixels) thresholds; counts over all
    pixels come from binary searches in one sorted copy of the maps. Thresholds descend, the last being the
    map minimum (everything predicted anomalous).
    """
    ranked = np.sort(maps, axis=None)
    positive = maps[masks]
    order = np.argsort(positive)
    weights = _region_weights(masks)[order[::-1]]
    positive = positive[order]
    steps = np.unique(positive)
    above = np.searchsorted(ranked, steps, side="right")
    ends = ranked[above[above < ranked.size]]
    thresholds = np.unique(np.concatenate([steps, ends, ranked[[0, -1]]]))[::-1]
    predicted = ranked.size - np.searchsorted(ranked, thresholds, side="left")
    tps = positive.size - np.searchsorted(positive, thresholds, side="left")
    overlap = np.concatenate([[0.0], np.cumsum(weights)])
    return tps, predicted - tps, overlap[tps], thresholds


def _aupro_from_counts(fps, pro, fpr_limit):
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    pro = np.concatenate([[0.0], pro])
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def _check_shapes(masks, maps, num_images=None):
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.ndim != 3 or num_images not in (None, masks.shape[0]):
        expected = "(N, H, W)" if num_images is None else f"(N, H, W) with N = len(labels) = {num_images}"
        raise ValueError(f"masks must have shape {expected}, got {masks.shape}")
    if maps.shape != masks.shape:
        raise ValueError(f"maps must have the shape of masks {masks.shape} (resize them first), got {maps.shape}")
    return masks, maps


def _check_pixel(masks, maps, num_images=None):
    """Validated (bool masks, float maps), both (N, H, W)."""
    masks, maps = _check_shapes(masks, maps, num_images)
    flat_masks, flat_maps = check_binary(masks, maps, "masks", "maps")
    return flat_masks.reshape(masks.shape), flat_maps.reshape(masks.shape)


def aupro(masks, maps, fpr_limit=FPR_LIMIT):
    """Normalised area under the per-region-overlap curve up to ``fpr_limit``; masks and maps (N, H, W)."""
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}")
    _, fps, pro, _ = _pixel_counts(*_check_pixel(masks, maps))
    return _aupro_from_counts(fps, pro, fpr_limit)


def _image_metrics(labels, scores):
    _, tps, fps = binary_counts(*check_binary(labels, scores))
    return {"i_auroc": auroc_from_counts(tps, fps), "i_ap": ap_from_counts(tps, fps),
            "i_f1max": f1max_from_counts(tps, fps)}


def _pixel_metrics(masks, maps, with_cut: bool = False):
    """The four pixel metrics; ``with_cut`` adds ``p_f1max_threshold``, the map value whose cut (``maps >= t``
    defective) gives ``p_f1max``."""
    tps, fps, pro, thresholds = _pixel_counts(masks, maps)
    f1 = f1_from_counts(tps, fps)
    metrics = {"p_auroc": auroc_from_counts(tps, fps), "p_ap": ap_from_counts(tps, fps), "p_f1max": float(f1.max()),
               "p_aupro": _aupro_from_counts(fps, pro, FPR_LIMIT)}
    return {**metrics, "p_f1max_threshold": float(thresholds[np.argmax(f1)])} if with_cut else metrics


def _with_mad(result):
    """Adds ``mad``, the mean of the seven metrics, when all seven are there."""
    if all(key in result for key in MAD_METRICS):
        result["mad"] = float(np.mean([result[key] for key in MAD_METRICS]))
    return result


def _check_labels(labels):
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got {labels.shape}")
    return labels


def _check_together(masks, maps):
    if (masks is None) != (maps is None):
        raise ValueError("masks and maps must be given together (pixel-level metrics need both)")


def anomaly_metrics(labels, scores, masks=None, maps=None):
    """Image-level metrics from labels (N,) and scores (N,); pixel-level ones too given masks and maps (N, H, W).

    Returns ``i_auroc``, ``i_ap``, ``i_f1max`` and, with masks/maps, ``p_auroc``, ``p_ap``, ``p_f1max``,
    ``p_aupro`` and ``mad``, the mean of these seven (MambaAD's mAD), as floats. Labels are 1 for anomalous
    images, masks 1 for anomalous pixels (binary; binarise 0/255 masks with ``masks > 0``); higher scores mean
    more anomalous. Raises ValueError on bad shapes, non-binary labels/masks, a single class, or non-finite scores.
    """
    labels = _check_labels(labels)
    result = _image_metrics(labels, scores)
    _check_together(masks, maps)
    if masks is None:
        return result
    result.update(_pixel_metrics(*_check_pixel(masks, maps, labels.shape[0])))
    return _with_mad(result)


def anomaly_metrics_by_category(categories, labels, scores, masks=None, maps=None, has_mask=None):
    """Metrics of each category separately, and their mean over categories (the benchmarks' "Avg" row).

    ``categories`` (N,) names each image's category. Returns ``{"per_category": {name: metrics},
    "mean": {metric: mean}}`` with categories in order of first appearance. Per category: image metrics as in
    ``anomaly_metrics`` (NaN, with a warning naming the category, when its images are all of one class); pixel
    metrics over the rows whose ``has_mask`` (N,) is True (default all; False marks anomalous images without a
    pixel annotation), computed only when masks/maps are given and those masks hold both anomalous and normal
    pixels, with ``p_f1max_threshold``, the map value t whose cut ``map >= t`` gives ``p_f1max`` (the category's
    best threshold for defect regions on these images); ``mad`` when all seven exist. ``mean`` averages each metric
    over the categories where it is a number (NaN when none is), and its ``mad`` is the mean of the seven means.
    """
    labels = _check_labels(labels)
    n = labels.shape[0]
    categories, scores = np.asarray(categories), np.asarray(scores)
    if categories.shape != (n,):
        raise ValueError(f"categories must have shape (N,) with N = len(labels) = {n}, got {categories.shape}")
    _check_together(masks, maps)
    if masks is not None:
        masks, maps = _check_shapes(masks, maps, n)
    has_mask = np.ones(n, bool) if has_mask is None else np.asarray(has_mask)
    if has_mask.shape != (n,) or not np.isin(has_mask, (0, 1)).all():
        raise ValueError(f"has_mask must be booleans of shape (N,) with N = len(labels) = {n}, got {has_mask.shape}")
    per_category = {}
    for name in dict.fromkeys(categories.tolist()):
        rows = np.flatnonzero(categories == name)
        result = _category_image_metrics(name, labels[rows], scores[rows])
        if masks is not None:
            rows = rows[has_mask[rows].astype(bool)]
            cat_masks = masks[rows]
            if (cat_masks != 0).any() and (cat_masks == 0).any():
                result.update(_pixel_metrics(*_check_pixel(cat_masks, maps[rows]), with_cut=True))
        per_category[name] = _with_mad(result)
    mean = {}
    for key in IMAGE_METRICS + PIXEL_METRICS:
        values = [r[key] for r in per_category.values() if key in r and not np.isnan(r[key])]
        if any(key in r for r in per_category.values()):
            mean[key] = float(np.mean(values)) if values else float("nan")
    return {"per_category": per_category, "mean": _with_mad(mean)}


def _category_image_metrics(name, labels, scores):
    classes = np.unique(labels)
    if classes.size == 1 and classes[0] in (0, 1):
        kind = "anomalous" if classes[0] else "normal"
        warnings.warn(f"category {name!r}: its test images are all {kind}; its image metrics are NaN", stacklevel=3)
        return dict.fromkeys(IMAGE_METRICS, float("nan"))
    return _image_metrics(labels, scores)
