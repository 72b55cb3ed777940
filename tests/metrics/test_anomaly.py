"""anomaly_metrics(_by_category) against scikit-learn (image and pixel level) and AU-PRO against a brute-force
threshold loop. Tolerance: 1e-9 absolute (float64 sums in different orders), 1e-12 for hand-computed areas."""

import tracemalloc
import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn import metrics as skm

from ssm_jax.metrics import anomaly_metrics, anomaly_metrics_by_category, aupro

KEYS = ("i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "p_aupro")


def _sklearn_f1_max(labels, scores):
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    denominator = precision + recall
    return np.max(np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator),
                            where=denominator > 0))


def _slow_aupro(masks, maps, limit=0.3):
    """Every unique score as a threshold; regions per image (8-connected, scipy.ndimage); trapezoids up to limit."""
    regions = []
    for i, mask in enumerate(masks):
        components, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, components == k) for k in range(1, count + 1)]
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
    assert result.keys() == expected.keys() and tuple(expected)[:7] == KEYS
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


def _expected(labels, scores, masks=None, maps=None):
    """scikit-learn and brute-force values of the seven metrics (pixel ones when masks are given) and mad."""
    out = {"i_auroc": skm.roc_auc_score(labels, scores), "i_ap": skm.average_precision_score(labels, scores),
           "i_f1max": _sklearn_f1_max(labels, scores)}
    if masks is not None:
        out.update(p_auroc=skm.roc_auc_score(masks.ravel(), maps.ravel()),
                   p_ap=skm.average_precision_score(masks.ravel(), maps.ravel()),
                   p_f1max=_sklearn_f1_max(masks.ravel(), maps.ravel()), p_aupro=_slow_aupro(masks, maps))
        out["mad"] = np.mean([out[k] for k in KEYS])
    return out


def _assert_close(result, expected):
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key


def _categories_case():
    """Three categories with ties; in 'b' two anomalous images lack a pixel annotation (masks zero, has_mask False)."""
    parts = [_random_case(seed, n=n, levels=levels) for seed, n, levels in ((10, 6, 8), (11, 8, None), (12, 4, 20))]
    labels, scores, masks, maps = (np.concatenate(x) for x in zip(*parts))
    categories = np.repeat(["a", "b", "c"], [6, 8, 4])
    has_mask = np.ones(labels.size, bool)
    unannotated = [6 + 5, 6 + 7]  # normal images of 'b' made anomalous without a mask
    labels[unannotated] = 1
    has_mask[unannotated] = False
    maps[unannotated] += 5.0  # would dominate the pixel metrics if they were scored
    return categories, labels, scores, masks, maps, has_mask


def _best_cut(masks, maps):
    """Brute force in float64: the largest map value t whose cut ``maps >= t`` has the largest pixel F1."""
    masks, maps = masks.astype(bool).ravel(), maps.astype(np.float64).ravel()
    f1 = {t: 2 * (masks & (maps >= t)).sum() / ((maps >= t).sum() + masks.sum()) for t in np.unique(maps)}
    best = max(f1.values())
    return max(t for t, v in f1.items() if v >= best - 1e-12)


def test_by_category_matches_sklearn_per_category():
    categories, labels, scores, masks, maps, has_mask = _categories_case()
    out = anomaly_metrics_by_category(categories, labels, scores, masks, maps, has_mask)
    assert list(out["per_category"]) == ["a", "b", "c"]
    for name in "abc":
        rows = categories == name
        kept = rows & has_mask
        expected = _expected(labels[rows], scores[rows])
        expected.update({k: v for k, v in _expected(labels[kept], scores[kept], masks[kept], maps[kept]).items()
                         if k.startswith("p_") or k == "mad"})
        expected["mad"] = np.mean([expected[k] for k in KEYS])
        expected["p_f1max_threshold"] = _best_cut(masks[kept], maps[kept])  # where p_f1max's regions are cut
        _assert_close(out["per_category"][name], expected)
    means = {k: np.mean([out["per_category"][c][k] for c in "abc"]) for k in KEYS}
    _assert_close(out["mean"], {**means, "mad": np.mean(list(means.values()))})


def test_by_category_single_class_and_no_pixel_annotation():
    categories, labels, scores, masks, maps, has_mask = _categories_case()
    only_normal = categories == "c"
    labels[only_normal], masks[only_normal] = 0, False
    with pytest.warns(UserWarning, match="category 'c'.*all normal.*NaN"):
        out = anomaly_metrics_by_category(categories, labels, scores, masks, maps, has_mask)
    c = out["per_category"]["c"]
    assert set(c) == {"i_auroc", "i_ap", "i_f1max"} and all(np.isnan(v) for v in c.values())  # no anomalous pixel
    for key in KEYS:  # the mean is over the categories where a metric is a number
        assert out["mean"][key] == pytest.approx(np.mean([out["per_category"][n][key] for n in "ab"]), abs=1e-12)
    assert out["mean"]["mad"] == pytest.approx(np.mean([out["mean"][k] for k in KEYS]), abs=1e-12)


def test_by_category_image_only_and_all_anomalous():
    categories = np.array(["x", "x", "x", "y", "y"])
    with pytest.warns(UserWarning, match="category 'y'.*all anomalous"):
        out = anomaly_metrics_by_category(categories, [0, 1, 1, 1, 1], [0.1, 0.8, 0.4, 0.3, 0.2])
    assert out["per_category"]["x"] == anomaly_metrics([0, 1, 1], [0.1, 0.8, 0.4])
    assert out["mean"] == out["per_category"]["x"]  # 'y' is NaN, left out; no pixel metrics, no mad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = anomaly_metrics_by_category(["x"] * 3, [0, 1, 1], [0.1, 0.8, 0.4], np.zeros((3, 4, 4)),
                                          np.zeros((3, 4, 4)))  # masks given but empty (ELPV): image metrics only
    assert set(out["mean"]) == {"i_auroc", "i_ap", "i_f1max"}


@pytest.mark.parametrize("kwargs, match", [
    (dict(categories=["a", "b"], labels=[0, 1, 1], scores=[0.1, 0.2, 0.3]), r"categories must have shape \(N,\)"),
    (dict(categories=list("aab"), labels=[0, 1, 1], scores=[0.1, 0.2, 0.3], masks=np.zeros((3, 2, 2))), "together"),
    (dict(categories=list("aab"), labels=[0, 1, 1], scores=[0.1, 0.2, 0.3], masks=np.zeros((3, 2, 2)),
          maps=np.zeros((3, 2, 2)), has_mask=[True, False]), "has_mask must be booleans"),
    (dict(categories=list("aab"), labels=[0, 1, 1], scores=[0.1, 0.2, 0.3], masks=255 * np.eye(2)[None].repeat(3, 0),
          maps=np.zeros((3, 2, 2))), "masks must be binary"),
])
def test_by_category_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        anomaly_metrics_by_category(**kwargs)


@pytest.mark.parametrize("where", ["top", "bottom", "everywhere"])
def test_ties_at_the_extremes(where):
    """Anomalous pixels sharing the map's maximum / minimum with normal ones: the reduced thresholds stay exact."""
    labels, scores, masks, maps = _random_case(7, levels=4)
    if where == "top":
        maps[masks] = maps.max()
    elif where == "bottom":
        maps[masks] = maps.min()
    else:
        maps[:] = np.where(masks, 0.5, maps.round())
    expected = _expected(labels, scores, masks, maps)
    _assert_close(anomaly_metrics(labels, scores, masks, maps), expected)


def test_pixel_memory_is_linear_and_small():
    """No pixels x thresholds arrays: peak extra memory under 20 bytes per pixel for float32 maps."""
    rng = np.random.default_rng(0)
    masks = np.zeros((40, 128, 128), bool)
    masks[::2, 30:60, 40:90] = True
    maps = rng.random(masks.shape, dtype=np.float32) + masks.astype(np.float32)
    labels, scores = masks.any(axis=(1, 2)).astype(int), maps.max(axis=(1, 2))
    tracemalloc.start()
    anomaly_metrics(labels, scores, masks, maps)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * masks.size
