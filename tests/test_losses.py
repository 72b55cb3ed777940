"""Losses against independent float64 NumPy references; gradients finite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.losses import (binary_focal_loss, cross_entropy, feature_mse_loss, info_nce_loss, memory_contrastive_loss,
                            memorymamba_loss)
from tests.host_checks import finite_on_host

RTOL = 1e-5


def _np_log_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def ref_cross_entropy(logits, labels, label_smoothing=0.0, class_weights=None, ordinal=0.0):
    """-sum_k q_k log p_k with q = (1 - e) t + e / K, t the one-hot target (or, with ordinal s > 0, t_k =
    exp(-s (k - y)^2) / sum_j exp(-s (j - y)^2)), times the label's weight, averaged over images."""
    logp = _np_log_softmax(np.asarray(logits, np.float64))
    k = logp.shape[1]
    weights = np.ones(k) if class_weights is None else np.asarray(class_weights, np.float64)
    terms = []
    for i, y in enumerate(labels):
        if ordinal:
            t = np.exp(-ordinal * (np.arange(k) - y) ** 2.0)
            t /= t.sum()
        else:
            t = np.eye(k)[y]
        target = (1 - label_smoothing) * t + label_smoothing / k
        terms.append(-weights[y] * np.dot(target, logp[i]))
    return np.mean(terms)


def ref_contrastive(queries, labels, num_classes, margin):
    q = np.asarray(queries, np.float64)
    protos = {k: q[labels == k].mean(0) for k in range(num_classes) if np.any(labels == k)}
    terms = []
    for k, hk in protos.items():
        for j, hj in protos.items():
            if j != k:
                cos = hk @ hj / (np.linalg.norm(hk) * np.linalg.norm(hj))
                terms.append(max(0.0, margin - (1.0 - cos)))
    return float(np.mean(terms)) if terms else 0.0


def ref_info_nce(features, memory, temperature, similarity="cos"):
    f = np.asarray(features, np.float64).reshape(features.shape[0], -1, features.shape[-1])
    m = np.asarray(memory, np.float64).reshape(f.shape)
    if similarity == "cos":
        f = f / np.linalg.norm(f, axis=-1, keepdims=True)
        m = m / np.linalg.norm(m, axis=-1, keepdims=True)
    batch, positions, _ = f.shape
    losses = []
    for p in range(positions):
        for b in range(batch):
            s = np.array([f[b, p] @ m[q, p] for q in range(batch)]) / temperature
            losses.append(-(s[b] - np.log(np.exp(s - s.max()).sum()) - s.max()))
    return float(np.mean(losses))


def _rng():
    return np.random.default_rng(0)


def test_cross_entropy():
    rng = _rng()
    logits, labels = rng.standard_normal((6, 4)).astype(np.float32), rng.integers(0, 4, 6)
    np.testing.assert_allclose(cross_entropy(jnp.asarray(logits), jnp.asarray(labels)),
                               ref_cross_entropy(logits, labels), rtol=RTOL)


@pytest.mark.parametrize("label_smoothing, class_weights", [(0.1, None), (0.0, [0.5, 2.0, 6.0, 1.0]),
                                                             (0.2, [0.5, 2.0, 6.0, 1.0])])
def test_cross_entropy_smoothed_and_weighted(label_smoothing, class_weights):
    rng = _rng()
    logits, labels = (3 * rng.standard_normal((8, 4))).astype(np.float32), np.array([0, 1, 2, 3, 0, 0, 2, 1])
    got = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing,
                        None if class_weights is None else np.asarray(class_weights, np.float32))
    want = ref_cross_entropy(logits, labels, label_smoothing, class_weights)
    np.testing.assert_allclose(got, want, rtol=RTOL)
    assert abs(want - ref_cross_entropy(logits, labels)) > 1e-2  # the options change the loss


@pytest.mark.parametrize("ordinal, label_smoothing, class_weights", [(1.0, 0.0, None),
                                                                     (0.5, 0.1, [0.5, 2.0, 6.0, 1.0])])
def test_cross_entropy_ordinal_soft_labels(ordinal, label_smoothing, class_weights):
    rng = _rng()
    logits, labels = (3 * rng.standard_normal((8, 4))).astype(np.float32), np.array([0, 1, 2, 3, 0, 0, 2, 1])
    got = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing,
                        None if class_weights is None else np.asarray(class_weights, np.float32), ordinal)
    want = ref_cross_entropy(logits, labels, label_smoothing, class_weights, ordinal)
    np.testing.assert_allclose(got, want, rtol=RTOL)
    assert abs(want - ref_cross_entropy(logits, labels, label_smoothing, class_weights)) > 1e-2
    # A neighbouring wrong class costs less than a far one: logits confident in class 1 or in class 3 for label 0.
    near, far = (cross_entropy(jnp.asarray([[0.0, 8.0, 0.0, 0.0]] if c == 1 else [[0.0, 0.0, 0.0, 8.0]]),
                               jnp.asarray([0]), ordinal=ordinal) for c in (1, 3))
    assert near < far


@pytest.mark.parametrize("labels", [[0, 2, 2, 3, 0, 3, 1, 0], [1, 1, 4, 4, 4, 1, 1, 1], [2] * 8])
def test_memory_contrastive(labels):
    labels = np.asarray(labels)
    q = _rng().standard_normal((8, 6)).astype(np.float32)
    q[:, 0] += 1.5  # mostly positive cosines: prototype distances spread over (0.3, 1.2)
    for margin in (0.5, 1.3):  # 0.5: the hinge is active for some class pairs and not others
        got = memory_contrastive_loss(jnp.asarray(q), jnp.asarray(labels), 5, margin)
        np.testing.assert_allclose(got, ref_contrastive(q, labels, 5, margin), rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("shape,similarity", [((5, 8), "cos"), ((4, 3, 2, 8), "cos"), ((4, 6, 8), "dot")])
def test_info_nce(shape, similarity):
    rng = _rng()
    f, m = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    scale = 1.0 if similarity == "cos" else 0.3
    got = info_nce_loss(jnp.asarray(f), jnp.asarray(m * scale), 0.2, similarity)
    np.testing.assert_allclose(got, ref_info_nce(f, m * scale, 0.2, similarity), rtol=RTOL)


def _outputs(rng, batch=6, classes=4):
    return {
        "logits": rng.standard_normal((batch, classes)).astype(np.float32),
        "coarse_queries": tuple(rng.standard_normal((batch, 5)).astype(np.float32) for _ in range(2)),
        "fine_features": (rng.standard_normal((batch, 4, 4, 3)), rng.standard_normal((batch, 2, 2, 6))),
        "fine_memory": (rng.standard_normal((batch, 4, 4, 3)), rng.standard_normal((batch, 2, 2, 6))),
    }


def test_memorymamba_loss_and_grads():
    rng = _rng()
    outputs = jax.tree.map(lambda a: np.asarray(a, np.float32), _outputs(rng))
    labels = np.array([0, 1, 1, 3, 0, 0])  # class 2 absent
    lam_c, lam_f, margin, tau = 0.5, 0.25, 0.8, 0.1
    cls = ref_cross_entropy(outputs["logits"], labels)
    con = np.mean([ref_contrastive(q, labels, 4, margin) for q in outputs["coarse_queries"]])
    nce = np.mean([ref_info_nce(z, m, tau) for z, m in zip(outputs["fine_features"], outputs["fine_memory"])])

    fn = jax.jit(lambda o: memorymamba_loss(o, jnp.asarray(labels), lam_c, lam_f, margin, tau))
    total, parts = fn(jax.tree.map(jnp.asarray, outputs))
    np.testing.assert_allclose(parts["cls"], cls, rtol=RTOL)
    np.testing.assert_allclose(parts["contrastive"], con, rtol=RTOL)
    np.testing.assert_allclose(parts["nce"], nce, rtol=RTOL)
    np.testing.assert_allclose(total, cls + lam_c * con + lam_f * nce, rtol=RTOL)

    grads = jax.jit(jax.grad(lambda o: fn(o)[0]))(jax.tree.map(jnp.asarray, outputs))
    grads = finite_on_host(grads)
    assert float(np.abs(grads["coarse_queries"][0]).sum()) > 0 and float(np.abs(grads["fine_memory"][1]).sum()) > 0

    smoothed, smoothed_parts = memorymamba_loss(outputs, jnp.asarray(labels), lam_c, lam_f, margin, tau, 0.1,
                                                np.array([1.0, 2.0, 3.0, 0.5], np.float32))
    smoothed_cls = ref_cross_entropy(outputs["logits"], labels, 0.1, [1.0, 2.0, 3.0, 0.5])
    np.testing.assert_allclose(smoothed_parts["cls"], smoothed_cls, rtol=RTOL)  # the options reach the CE term only
    np.testing.assert_allclose(smoothed, smoothed_cls + lam_c * con + lam_f * nce, rtol=RTOL)

    dot_total, dot_parts = memorymamba_loss(outputs, jnp.asarray(labels), lam_c, lam_f, margin, tau,
                                            nce_similarity="dot")  # eq. 24's example similarity reaches InfoNCE
    pairs = zip(outputs["fine_features"], outputs["fine_memory"])
    dot_nce = np.mean([ref_info_nce(z, m, tau, "dot") for z, m in pairs])
    assert abs(dot_nce - nce) > 1e-3
    np.testing.assert_allclose(dot_parts["nce"], dot_nce, rtol=RTOL)
    np.testing.assert_allclose(dot_total, cls + lam_c * con + lam_f * dot_nce, rtol=RTOL)

    ablated = {"logits": outputs["logits"]}  # memories switched off: their terms are 0
    total, parts = memorymamba_loss(ablated, jnp.asarray(labels), lam_c, lam_f, margin, tau)
    assert float(parts["contrastive"]) == 0.0 and float(parts["nce"]) == 0.0
    np.testing.assert_allclose(total, cls, rtol=RTOL)


def test_contrastive_grads_finite_with_zero_queries():
    q = jnp.zeros((4, 3)).at[0].set(1.0)
    g = jax.grad(memory_contrastive_loss)(q, jnp.array([0, 1, 1, 2]), 3, 0.5)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_feature_mse_loss():
    rng = _rng()
    shapes = [(2, 8, 8, 4), (2, 4, 4, 6), (2, 2, 2, 8)]
    enc = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    dec = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    expected = sum(5.0 * np.mean((e.astype(np.float64) - d) ** 2) for e, d in zip(enc, dec))
    got = jax.jit(feature_mse_loss)([jnp.asarray(e) for e in enc], [jnp.asarray(d, jnp.bfloat16) for d in dec])
    assert got.dtype == jnp.float32
    bf16 = [np.asarray(jnp.asarray(d, jnp.bfloat16), np.float64) for d in dec]
    np.testing.assert_allclose(got, sum(5.0 * np.mean((e - d) ** 2) for e, d in zip(enc, bf16)), rtol=RTOL)
    np.testing.assert_allclose(feature_mse_loss(enc, dec, weight=1.0), expected / 5.0, rtol=RTOL)
    with pytest.raises(ValueError, match="differ"):
        feature_mse_loss(enc, dec[::-1])


@pytest.mark.parametrize("gamma,alpha", [(0.0, -1.0), (2.0, -1.0), (2.0, 0.25), (1.5, 0.7), (0.5, 0.25)])
def test_binary_focal_loss_matches_reference(gamma, alpha):
    rng = np.random.default_rng(7)
    z = rng.standard_normal((4, 9)) * 4
    t = np.concatenate([rng.integers(0, 2, (4, 6)), rng.random((4, 3))], axis=1)  # hard and soft targets
    p = 1 / (1 + np.exp(-z))
    pt = t * p + (1 - t) * (1 - p)
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    weight = 1.0 if alpha < 0 else t * alpha + (1 - t) * (1 - alpha)
    expected = np.mean(weight * (1 - pt) ** gamma * ce)
    ours = binary_focal_loss(jnp.asarray(z, jnp.float32), jnp.asarray(t, jnp.float32), gamma, alpha)
    np.testing.assert_allclose(float(ours), expected, rtol=RTOL)
    # Stable far in both tails: confidently wrong, and confidently right, where the sigmoid saturates to exactly
    # 0 or 1 in float32 (a NaN gradient there stopped SNARM's GPU runs at step ~130: its selector uses gamma 0).
    logits, targets = jnp.asarray([50.0, -50.0, 0.0, 20.0, -20.0, 200.0]), jnp.asarray([0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    grad = np.asarray(jax.grad(binary_focal_loss)(logits, targets, gamma, alpha), np.float64)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[3:], 0.0, atol=1e-7)
    assert grad[0] > 0 and grad[1] < 0
    with pytest.raises(ValueError, match="logits .* and targets .* differ"):
        binary_focal_loss(jnp.zeros(3), jnp.zeros(4))


def test_labels_of_another_shape_or_range_are_named():
    """One-hot labels, and -1 or K, are refused while known; under jit a label out of range gives a NaN loss, not
    another class's term (-1 used to read the last class)."""
    logits = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4)), jnp.float32)
    with pytest.raises(ValueError, match=r"labels of shape \(2, 4\) and dtype float32 .*one-hot labels: "
                                         r"labels.argmax\(-1\)"):
        cross_entropy(logits, jax.nn.one_hot(jnp.array([0, 3]), 4))
    for bad in (-1, 4):
        with pytest.raises(ValueError, match=rf"label {bad} is outside 0..3"):
            cross_entropy(logits, jnp.array([0, bad]))
        assert np.isnan(jax.jit(cross_entropy)(logits, jnp.array([0, bad])))
    assert np.isfinite(jax.jit(cross_entropy)(logits, jnp.array([0, 3])))
