"""SNARM model: head and ensemble shapes, patch features vs a PyTorch composition (1e-5), navigation sequences and
the navigated block against their definitions, the anomaly map vs a float64 NumPy/SciPy reference (1e-5),
jit and gradients (encoder frozen, selector trained only through its own loss), and bad settings."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from ssm_jax.models.resnet import build_resnet
from ssm_jax.models.snarm import (NavigatedMambaBlock, anomaly_map_from_logits, anomaly_maps, build_snarm,
                                  navigation_sequences, snarm_model_config)
from ssm_jax.nn.mamba import MambaMixer
from ssm_jax.ssm import scan_orders


def tiny_config(**overrides):
    """ResNet18 features (32 channels) on 64 px images: an 8 x 8 map; 2 branches x 2 scans = 4 heads."""
    fields = dict(encoder="resnet18", feature_dim=32, embed_dim=16, depth=1, atrous_rates=(1, 2), directions=2,
                  scan_impl="sequential")
    return snarm_model_config(**{**fields, **overrides})


def tiny(**overrides):
    return build_snarm(tiny_config(**overrides)).clone(bank_size=40)


@pytest.fixture(scope="module")
def model_and_variables():
    model = tiny()
    images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    variables = jax.jit(model.init)(jax.random.key(1), images)
    bank = jax.random.normal(jax.random.key(2), (40, 32))
    return model, {**variables, "bank": {"features": bank, "image_index": jnp.arange(40, dtype=jnp.int32) % 3}}, images


def test_heads_and_ensemble_shapes(model_and_variables):
    model, variables, images = model_and_variables
    assert set(variables["params"]) == {"encoder", "decoder"}
    assert set(variables["params"]["decoder"]) == {"selector", "branch0", "branch1"}
    out = jax.jit(model.apply)(variables, images)
    assert out["logits"].shape == (2, 4, 8, 8) and out["selector"].shape == (2, 8, 8)
    np.testing.assert_array_equal(np.asarray(out["references"]).sum((1, 2)), [48, 48])  # round(64 * 0.75)
    maps, scores = anomaly_maps(tiny_config(), variables, images)
    assert maps.shape == (2, 64, 64) and scores.shape == (2,)
    assert np.all((np.asarray(maps) > 0) & (np.asarray(maps) < 1))  # a mean of sigmoids
    np.testing.assert_allclose(maps, anomaly_map_from_logits(out["logits"], (64, 64))[0], rtol=1e-6, atol=1e-6)
    for wrong, named in ((model, "not a module"), ({"model": tiny_config()}, "not the whole config")):
        with pytest.raises(ValueError, match=named):
            anomaly_maps(wrong, variables, images)
    with pytest.raises(ValueError, match="no 'bank' collection"):
        anomaly_maps(tiny_config(), {k: v for k, v in variables.items() if k != "bank"}, images)
    with pytest.raises(ValueError, match="images are uint8, raw pixels; expected ImageNet-normalised"):
        anomaly_maps(tiny_config(), variables, np.zeros((2, 64, 64, 3), np.uint8))
    full = build_snarm(snarm_model_config(encoder="resnet18", feature_dim=32, scan_impl="sequential"))
    shapes = jax.eval_shape(full.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert len([k for k in shapes["params"]["decoder"]["branch0"] if k.endswith("_out")]) == 4  # 4 scans a branch
    assert len([k for k in shapes["params"]["decoder"] if k.startswith("branch")]) == 4  # rates 3, 6, 12, 24


def test_patch_features_match_torch_composition(model_and_variables):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    model, variables, images = model_and_variables
    ours = np.asarray(model.apply(variables, images, method=model.patch_features))
    stages = build_resnet("resnet18", (2, 3)).apply(
        {"params": variables["params"]["encoder"], "batch_stats": variables["batch_stats"]["encoder"]}, images)
    parts = []
    for f in stages:
        t = torch.from_numpy(np.array(f)).permute(0, 3, 1, 2)
        t = F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False)
        t = F.interpolate(t, size=(8, 8), mode="bilinear", align_corners=False)
        t = t.permute(0, 2, 3, 1).reshape(-1, 1, t.shape[1])
        parts.append(F.adaptive_avg_pool1d(t, 16).reshape(2, 8, 8, 16))
    np.testing.assert_allclose(ours, torch.cat(parts, -1).numpy(), rtol=1e-5, atol=1e-5)


def test_navigation_sequences_visit_non_references_in_scan_order():
    rng = np.random.default_rng(0)
    refs = np.zeros((2, 20), bool)
    for row in refs:
        row[rng.choice(20, 14, replace=False)] = True
    orders = scan_orders("sweep", 4, 5, 4)
    seq = np.asarray(navigation_sequences(jnp.asarray(refs), orders, 14))
    assert seq.shape == (2, 4, 6)
    for b in range(2):
        for k in range(4):
            np.testing.assert_array_equal(seq[b, k], [i for i in orders[k] if not refs[b, i]])


def test_navigated_block_runs_the_mixer_on_non_references_only():
    rng = np.random.default_rng(1)
    b, k, h, w, e = 2, 2, 4, 4, 8
    hidden = jnp.asarray(rng.standard_normal((b, k, h * w, e)), jnp.float32)
    refs = np.zeros((b, h * w), bool)
    refs[:, rng.choice(h * w, 10, replace=False)] = True
    sequence = navigation_sequences(jnp.asarray(refs), scan_orders("sweep", h, w, k), 10)
    block = NavigatedMambaBlock(scan_impl="sequential")
    params = jax.jit(block.init, static_argnums=(4, 5))(jax.random.key(0), hidden, None, sequence, h, w)["params"]
    out, stream = block.apply({"params": params}, hidden, None, sequence, h, w)
    np.testing.assert_array_equal(np.asarray(stream), np.asarray(hidden))  # the first block's stream is its input
    normed = nn.RMSNorm(epsilon=1e-5).apply({"params": params["norm"]}, hidden)
    conv = nn.Conv(e, (3, 3), padding=((1, 1), (1, 1))).apply({"params": params["conv"]},
                                                              normed.reshape(b * k, h, w, e)).reshape(b, k, h * w, e)
    mix = jax.jit(MambaMixer(e, 4, 4, 2, scan_impl="sequential").apply)
    for bi in range(b):
        np.testing.assert_allclose(np.asarray(out[bi][:, refs[bi]]), np.asarray(conv[bi][:, refs[bi]]), rtol=1e-6)
        for ki in range(k):
            idx = np.asarray(sequence[bi, ki])
            mixed = mix({"params": params["mixer"]}, conv[bi, ki][idx][None])[0]
            np.testing.assert_allclose(np.asarray(out[bi, ki][idx]), np.asarray(mixed), rtol=1e-5, atol=1e-6)


def _bilinear_align_corners(x, size):
    """float64 reference: (h, w) -> (size, size), corners aligned."""
    h, w = x.shape

    def weights(n, m):
        pos = np.arange(m) * (n - 1) / (m - 1)
        lo = np.minimum(np.floor(pos).astype(int), n - 1)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, pos - lo

    rl, rh, rw = weights(h, size)
    cl, ch, cw = weights(w, size)
    rows = x[rl] * (1 - rw[:, None]) + x[rh] * rw[:, None]
    return rows[:, cl] * (1 - cw) + rows[:, ch] * cw


def test_anomaly_map_matches_reference():
    logits = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32) * 3
    maps, scores = anomaly_map_from_logits(jnp.asarray(logits), (64, 64), sigma=4.0, score_pool=16, score_stride=2)
    for i in range(2):
        prob = np.mean([1 / (1 + np.exp(-_bilinear_align_corners(logits[i, j].astype(np.float64), 64)))
                        for j in range(3)], axis=0)
        expected = ndimage.gaussian_filter(prob, 4.0, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(np.asarray(maps[i]), expected, rtol=1e-5, atol=1e-6)
        pooled = [expected[r:r + 16, c:c + 16].mean() for r in range(0, 49, 2) for c in range(0, 49, 2)]
        np.testing.assert_allclose(float(scores[i]), max(pooled), rtol=1e-5)
    _, raw_max = anomaly_map_from_logits(jnp.asarray(logits), (64, 64), sigma=0.0, score_pool=1, score_stride=1)
    np.testing.assert_allclose(np.asarray(raw_max), np.asarray(anomaly_map_from_logits(
        jnp.asarray(logits), (64, 64), sigma=0.0)[0]).max((1, 2)), rtol=1e-6)


def test_gradients_reach_the_heads_not_the_encoder(model_and_variables):
    model, variables, images = model_and_variables

    def loss(params, selector_weight):
        out, _ = model.apply({**variables, "params": params}, images, train=True, query_groups=jnp.array([0, 1]),
                             rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"])
        return jnp.mean(out["logits"] ** 2) + selector_weight * jnp.mean(out["selector"] ** 2)

    grad = jax.jit(jax.grad(loss))
    heads_only, with_selector = grad(variables["params"], 0.0), grad(variables["params"], 1.0)
    for g in (heads_only, with_selector):
        assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g))
        assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(g["encoder"]))  # frozen: stop_gradient
    nonzero = [bool(np.any(np.asarray(x))) for x in jax.tree.leaves(heads_only["decoder"]["branch0"])]
    assert np.mean(nonzero) > 0.9
    # The reference choice is not differentiable: the selector learns only from its own term.
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(heads_only["decoder"]["selector"]))
    assert all(np.any(np.asarray(x)) for x in jax.tree.leaves(with_selector["decoder"]["selector"]))


def test_bad_settings_are_named():
    """Named while tracing (``eval_shape``: nothing is compiled)."""
    images = jnp.zeros((1, 64, 64, 3))
    with pytest.raises(ValueError, match="unknown SNARM encoder 'vgg16'"):
        jax.eval_shape(tiny(encoder="vgg16").init, jax.random.key(0), images)
    with pytest.raises(ValueError, match="self_ratio=1.0 gives 64 reference patches of 64"):
        jax.eval_shape(tiny(self_ratio=1.0).init, jax.random.key(0), images)
    with pytest.raises(ValueError, match="feature_dim=33 must be divisible by the 2 feature layers"):
        jax.eval_shape(tiny(feature_dim=33).init, jax.random.key(0), images)
    with pytest.raises(ValueError, match=r"expected \(batch, height, width, 3\)"):
        jax.eval_shape(tiny().init, jax.random.key(0), jnp.zeros((64, 64, 3)))
    with pytest.raises(ValueError, match=r"the feature map has 1 patch; the intra-residual needs at least 3 .*use "
                                         r"larger images"):
        jax.eval_shape(tiny().init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_query_groups_of_another_length_are_named(model_and_variables):
    model, variables, images = model_and_variables
    with pytest.raises(ValueError, match=r"SNARM: query_groups has shape \(3,\), expected \(2,\): one bank "
                                         r"image_index per image"):
        model.apply(variables, images, query_groups=jnp.arange(3))


def test_the_bank_passed_in_is_the_one_searched(model_and_variables):
    """``bank_size`` only shapes the bank at init: a module built with another size applies the bank it is given
    alike (before, it searched min(num_neighbours, bank_size) = 1 neighbour of a 40-row bank); a bank never filled
    is refused by ``anomaly_maps`` instead of scoring images against zeros."""
    model, variables, images = model_and_variables
    unsized = build_snarm(tiny_config())
    assert unsized.bank_size == 1 and model.bank_size == 40
    np.testing.assert_array_equal(jax.jit(unsized.apply)(variables, images)["logits"],
                                  jax.jit(model.apply)(variables, images)["logits"])
    fresh = jax.jit(unsized.init)(jax.random.key(1), images)
    with pytest.raises(ValueError, match="the bank holds no normal patches"):
        anomaly_maps(tiny_config(), fresh, images)
