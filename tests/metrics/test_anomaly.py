"""anomaly_metrics against scikit-learn (image and pixel level) and AU-PRO against a slow threshold loop."""

import numpy as np
import pytest
from skimage.measure import label as connected_components
from sklearn import metrics as skm

from ssm_jax.metrics import anomaly_metrics, aupro


def _sklearn_f1_max(labels, scores):
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    denominator = precision + recall
    return np.max(np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator),
                            where=denominator > 0))


def _slow_aupro(masks, maps, limit=0.3):
    """Every unique score as a threshold; regions per image (8-connected, skimage); trapezoids up to limit."""
    regions = []
    for i, mask in enumerate(masks):
        components = connected_components(mask, connectivity=2)
        regions += [(i, components == k) for k in range(1, components.max() + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        fpr = (predicted & normal).sum() / normal.sum()
        pro = np.mean([(predicted[i] & region).sum() / region.sum() for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= limit:
            break
        if x1 > limit:  # cut the segment at the limit
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def _random_case(seed, n=6, size=12, levels=None):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n // 2):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 2, 2)
            h, w = rng.integers(1, 5, 2)
            masks[i, y:y + h, x:x + w] = True
    maps = rng.random(masks.shape) + masks * rng.uniform(0, 1)
    if levels is not None:
        maps = np.round(maps * levels) / levels
    labels = masks.any(axis=(1, 2)).astype(int)
    scores = maps.reshape(n, -1).max(axis=1)
    return labels, scores, masks, maps.astype(np.float32)


@pytest.mark.parametrize("seed, levels", [(0, None), (1, 8), (2, 30), (3, None)])
def test_matches_sklearn_and_slow_aupro(seed, levels):
    labels, scores, masks, maps = _random_case(seed, levels=levels)
    result = anomaly_metrics(labels, scores, masks, maps)
    expected = {
        "i_auroc": skm.roc_auc_score(labels, scores),
        "i_ap": skm.average_precision_score(labels, scores),
        "i_f1max": _sklearn_f1_max(labels, scores),
        "p_auroc": skm.roc_auc_score(masks.ravel(), maps.ravel()),
        "p_ap": skm.average_precision_score(masks.ravel(), maps.ravel()),
        "p_f1max": _sklearn_f1_max(masks.ravel(), maps.ravel()),
        "p_aupro": _slow_aupro(masks, maps),
    }
    expected["mad"] = np.mean(list(expected.values()))
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9), key
        assert 0.0 <= result[key] <= 1.0 and isinstance(result[key], float)
    assert aupro(masks, maps) == result["p_aupro"]


def test_image_level_only():
    result = anomaly_metrics([0, 1, 1, 0], [0.1, 0.8, 0.4, 0.5])
    assert set(result) == {"i_auroc", "i_ap", "i_f1max"}
    assert result["i_auroc"] == 0.75


def test_aupro_known_cases():
    _, _, masks, _ = _random_case(5)
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)  # perfect map
    # Constant map: one threshold, the curve is the line (0, 0) -> (1, 1); area to 0.3 is 0.045, / 0.3 = 0.15.
    assert aupro(masks, np.zeros(masks.shape)) == pytest.approx(0.15)
    assert aupro(masks, np.zeros(masks.shape), fpr_limit=1.0) == pytest.approx(0.5)


def test_aupro_regions_are_8_connected_and_per_image():
    masks = np.zeros((2, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region of 2 pixels
    masks[0, 4, 4] = True  # a second region of 1 pixel
    masks[1, 0, :] = True  # lies on image 0's first region, but in another image: a third region
    maps = np.zeros(masks.shape)
    maps[0, 0, 0] = 3.0  # half of region 1 first
    maps[0, 4, 0] = 2.0  # then one normal pixel (FPR 1/42)
    maps[0, 4, 4] = 1.0  # then region 2
    fpr_step = 1 / (~masks).sum()
    # PRO curve (0,0) -> (0, 1/6) -> (f, 1/6) -> (f, 1/2) -> (1, 1); with 4-connectivity it would differ.
    area_to_limit = fpr_step / 6 + (0.3 - fpr_step) * (0.5 + 0.5 + 0.5 * (0.3 - fpr_step) / (1 - fpr_step)) / 2
    assert aupro(masks, maps) == pytest.approx(area_to_limit / 0.3, abs=1e-12)
    assert aupro(masks, maps) == pytest.approx(_slow_aupro(masks, maps), abs=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(labels=[[0, 1]], scores=[[0.1, 0.2]]), r"labels must have shape \(N,\)"),
        (dict(labels=[0, 0], scores=[0.1, 0.2]), "labels must contain both classes"),
        (dict(labels=[0, 1], scores=[0.1]), "scores must have the shape of labels"),
        (dict(labels=[0, 1], scores=[0.1, 0.2], masks=np.zeros((2, 4, 4))), "given together"),
        (dict(labels=[0, 1], scores=[0.1, 0.2], masks=np.zeros((3, 4, 4)), maps=np.zeros((3, 4, 4))),
         r"masks must have shape \(N, H, W\) with N = len\(labels\) = 2"),
        (dict(labels=[0, 1], scores=[0.1, 0.2], masks=np.eye(4)[None].repeat(2, 0), maps=np.zeros((2, 8, 8))),
         r"maps must have the shape of masks \(2, 4, 4\)"),
        (dict(labels=[0, 1], scores=[0.1, 0.2], masks=255 * np.eye(4)[None].repeat(2, 0), maps=np.zeros((2, 4, 4))),
         "masks must be binary"),
        (dict(labels=[0, 1], scores=[0.1, 0.2], masks=np.zeros((2, 4, 4)), maps=np.zeros((2, 4, 4))),
         "masks must contain both classes"),
        (dict(labels=[0, 1], scores=[0.1, 0.2], masks=np.eye(4)[None].repeat(2, 0), maps=np.full((2, 4, 4), np.inf)),
         "maps must be finite"),
    ],
)
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        anomaly_metrics(**kwargs)
