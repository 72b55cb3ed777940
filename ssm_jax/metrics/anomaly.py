"""Anomaly detection metrics of MambaAD / anomalib: image- and pixel-level AU-ROC, AP, F1-max, AU-PRO, mAD.

All are fractions in [0, 1] (the papers print percentages). Pixel-level metrics pool the pixels of all images.
AU-PRO follows the MVTec AD definition (Bergmann et al.): ground-truth regions are the 8-connected components
of each mask; at a threshold, PRO is the mean over all regions of the fraction of the region's pixels predicted
anomalous, and FPR is the fraction of all normal pixels predicted anomalous; the PRO-over-FPR curve is
integrated (trapezoids) up to FPR 0.3, with PRO interpolated linearly at 0.3, and divided by 0.3. The curve is
exact: every distinct score is a threshold, starting from (0, 0). (MambaAD's own code samples 200 thresholds and
rescales the FPR axis, which gives slightly different numbers.)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ssm_jax.metrics.curves import (
    ap_from_counts,
    auroc_from_counts,
    binary_counts,
    check_binary,
    cumulative_at_thresholds,
    f1max_from_counts,
)

FPR_LIMIT = 0.3


def _region_weights(masks):
    """Per-pixel weight 1 / (region size * number of regions) on anomalous pixels, 0 elsewhere."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connectivity inside each image, none across images
    regions, num_regions = ndimage.label(masks, structure=structure)
    sizes = np.bincount(regions.ravel())
    per_region = np.zeros(sizes.size)
    per_region[1:] = 1.0 / (sizes[1:] * num_regions)
    return per_region[regions.ravel()]


def _area_up_to(x, y, limit):
    """Trapezoid area under y(x) for x in [0, limit], y interpolated at limit; x non-decreasing from 0."""
    k = np.searchsorted(x, limit, side="right")  # x[:k] <= limit < x[k]
    area = np.sum(np.diff(x[:k]) * (y[1:k] + y[: k - 1])) / 2
    if k < x.size:
        y_limit = y[k - 1] + (y[k] - y[k - 1]) * (limit - x[k - 1]) / (x[k] - x[k - 1])
        area += (limit - x[k - 1]) * (y[k - 1] + y_limit) / 2
    return float(area)


def _pixel_counts(masks, maps, shape):
    """True positives, false positives and summed region overlaps (PRO) at each distinct map value; one sort."""
    positive = masks.astype(np.int64)
    weights = [positive, 1 - positive, _region_weights(masks.reshape(shape))]
    return cumulative_at_thresholds(maps, weights)[1]


def _aupro_from_counts(fps, pro, fpr_limit):
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    pro = np.concatenate([[0.0], pro])
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def _check_pixel(masks, maps, num_images=None):
    """Validated flat (masks, maps) and their (N, H, W) shape."""
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.ndim != 3 or num_images not in (None, masks.shape[0]):
        expected = "(N, H, W)" if num_images is None else f"(N, H, W) with N = len(labels) = {num_images}"
        raise ValueError(f"masks must have shape {expected}, got {masks.shape}")
    if maps.shape != masks.shape:
        raise ValueError(f"maps must have the shape of masks {masks.shape} (resize them first), got {maps.shape}")
    flat_masks, flat_maps = check_binary(masks, maps, "masks", "maps")
    return flat_masks, flat_maps, masks.shape


def aupro(masks, maps, fpr_limit=FPR_LIMIT):
    """Normalised area under the per-region-overlap curve up to ``fpr_limit``; masks and maps (N, H, W)."""
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}")
    _, fps, pro = _pixel_counts(*_check_pixel(masks, maps))
    return _aupro_from_counts(fps, pro, fpr_limit)


def anomaly_metrics(labels, scores, masks=None, maps=None):
    """Image-level metrics from labels (N,) and scores (N,); pixel-level ones too given masks and maps (N, H, W).

    Returns ``i_auroc``, ``i_ap``, ``i_f1max`` and, with masks/maps, ``p_auroc``, ``p_ap``, ``p_f1max``,
    ``p_aupro`` and ``mad``, the mean of these seven (MambaAD's mAD), as floats. Labels are 1 for anomalous
    images, masks 1 for anomalous pixels (binary; binarise 0/255 masks with ``masks > 0``); higher scores mean
    more anomalous. Raises ValueError on bad shapes, non-binary labels/masks, a single class, or non-finite scores.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got {labels.shape}")
    _, i_tps, i_fps = binary_counts(*check_binary(labels, scores))
    result = {
        "i_auroc": auroc_from_counts(i_tps, i_fps),
        "i_ap": ap_from_counts(i_tps, i_fps),
        "i_f1max": f1max_from_counts(i_tps, i_fps),
    }
    if (masks is None) != (maps is None):
        raise ValueError("masks and maps must be given together (pixel-level metrics need both)")
    if masks is None:
        return result
    flat_masks, flat_maps, shape = _check_pixel(masks, maps, labels.shape[0])
    p_tps, p_fps, p_pro = _pixel_counts(flat_masks, flat_maps, shape)
    result.update(
        p_auroc=auroc_from_counts(p_tps, p_fps),
        p_ap=ap_from_counts(p_tps, p_fps),
        p_f1max=f1max_from_counts(p_tps, p_fps),
        p_aupro=_aupro_from_counts(p_fps, p_pro, FPR_LIMIT),
    )
    result["mad"] = float(np.mean(list(result.values())))
    return result
