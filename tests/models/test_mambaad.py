"""MambaAD: shapes per stage, parameter count, the official init of the LSS convs, frozen encoder gradients,
scan-order and fused-directions switches, layout errors."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssm_jax.data.pipeline import normalize
from ssm_jax.models.mambaad import (anomaly_map_from_features, anomaly_maps, build_mambaad, drop_path_rates,
                                    lss_layout, mambaad_model_config)

TINY = dict(encoder="resnet18", decoder_dims=(64, 256, 128, 64), decoder_depths=(2, 2, 2, 2), scan_impl="sequential")


def _count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def test_default_model_shapes_and_size_at_256px():
    model = build_mambaad(mambaad_model_config())
    x = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(model.apply, variables, x)
    for name in ("encoder", "decoder"):
        assert [f.shape for f in out[name]] == [(2, 64, 64, 64), (2, 32, 32, 128), (2, 16, 16, 256)]
    total = _count(variables["params"]) / 1e6
    assert 25.0 < total < 26.5  # the paper's Table: 25.7 M
    assert sorted(variables["batch_stats"]) == ["bottleneck", "encoder"]


@pytest.fixture(scope="module")
def tiny():
    model = build_mambaad(mambaad_model_config(**TINY))
    images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    variables = jax.jit(model.init)(jax.random.key(0), images)
    return model, variables, images


def test_images_not_nhwc_rgb_and_a_whole_config_are_named(tiny):
    model, variables, images = tiny
    with pytest.raises(ValueError, match=r"MambaAD: images have shape \(2, 3, 64, 64\), expected \(batch, height, "
                                         r"width, 3\) \(NHWC, RGB\)"):
        model.apply(variables, jnp.moveaxis(images, -1, 1))
    config = ml_collections.ConfigDict({"model": mambaad_model_config(**TINY)})
    with pytest.raises(ValueError, match=r"pass the model section of a config \(config.model\)"):
        anomaly_maps(config, variables, images)


def test_anomaly_maps_refuse_pixels_that_are_not_normalised(tiny):
    """Raw pixels scored, wrongly, without a word: uint8 gave 0.345 where its normalised image gives 0.354."""
    _, variables, images = tiny
    config = mambaad_model_config(**TINY)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"anomaly_maps: images are uint8, raw pixels; expected ImageNet-normalised "
                                         r"float images: normalise them"):
        anomaly_maps(config, variables, pixels)
    with pytest.raises(ValueError, match=r"anomaly_maps: images reach 25\d\.?\d*, beyond the \+-10 of "
                                         r"ImageNet-normalised pixels \(a 0-255 scale\?\)"):
        anomaly_maps(config, variables, pixels.astype(np.float32))
    maps, scores = anomaly_maps(config, variables, normalize(pixels))
    assert maps.shape == (2, 64, 64) and np.isfinite(np.asarray(scores)).all()


def test_depthwise_convs_start_as_the_official_lss_init(tiny):
    """ADer's ConvBNSSMBlock._init_weights: every conv ~ N(0, 2 / fan_out), fan_out = k * k * out / groups, so a
    depthwise k x k conv (the branches' and SS2D's) has std sqrt(2 / k^2) at any width; the 1x1 convs sqrt(2 / C)."""
    params = jax.tree_util.tree_flatten_with_path(tiny[1]["params"]["decoder"])[0]
    found = 0
    for path, kernel in params:
        name = jax.tree_util.keystr(path)
        if name.endswith("['kernel']") and ("conv_dw" in name or "conv2d" in name or "conv_in" in name):
            k, _, _, out = kernel.shape
            groups = out if kernel.shape[2] == 1 else 1
            expected = np.sqrt(2.0 / (k * k * out / groups))
            assert abs(float(np.std(kernel)) / expected - 1) < 0.15, (name, float(np.std(kernel)), expected)
            found += 1
    assert found >= 3 * 8  # every module's two depthwise convs, two 1x1 inputs and SS2D convs


@pytest.mark.slow  # ~40 s here; tests/training/test_reconstruction.py checks a trained run's frozen encoder by default
def test_gradients_reach_the_decoder_and_bottleneck_not_the_encoder(tiny):
    model, variables, images = tiny

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(2)})
        return sum(jnp.mean((e - d) ** 2) for e, d in zip(out["encoder"], out["decoder"]))

    grads = jax.device_get(jax.jit(jax.grad(loss))(variables["params"]))  # NumPy below: no compile per leaf shape
    norm = {k: float(sum(np.sum(np.square(g, dtype=np.float64)) for g in jax.tree.leaves(v))) for k, v in grads.items()}
    assert norm["encoder"] == 0.0
    assert norm["decoder"] > 0.0 and norm["bottleneck"] > 0.0


@pytest.mark.slow  # two decoders compiled; the orders themselves: tests/ssm/test_scan_orders.py, by default
def test_scan_order_changes_outputs_not_shapes(tiny):
    _, variables, images = tiny
    outs = {m: jax.jit(build_mambaad(mambaad_model_config(**TINY, scan_method=m)).apply)(variables, images)["decoder"]
            for m in ("hilbert", "sweep")}
    for a, b in zip(outs["hilbert"], outs["sweep"]):
        assert a.shape == b.shape
        assert float(jnp.abs(a - b).max()) > 1e-4


def test_fused_directions_is_a_config_field_with_equal_outputs(tiny):
    """The gathered path (``fused_directions=False``) and the default in-place path give the same decoder output,
    and the field reaches every SS2D (the jaxprs differ)."""
    _, variables, images = tiny
    models = {f: build_mambaad(mambaad_model_config(**TINY, fused_directions=f)) for f in (True, False)}
    outs = {f: jax.jit(m.apply)(variables, images)["decoder"] for f, m in models.items()}
    for a, b in zip(outs[True], outs[False]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    jaxprs = {f: str(jax.make_jaxpr(m.apply)(variables, images)) for f, m in models.items()}
    assert jaxprs[True] != jaxprs[False]


def test_anomaly_map_is_zero_for_perfect_reconstruction_and_positive_otherwise():
    feats = [jax.random.normal(jax.random.key(i), (2, s, s, 8)) for i, s in enumerate((16, 8, 4))]
    maps_fn = jax.jit(anomaly_map_from_features, static_argnums=2)
    maps, scores = maps_fn(feats, feats, (64, 64))
    assert maps.shape == (2, 64, 64) and scores.shape == (2,)
    np.testing.assert_allclose(maps, 0.0, atol=1e-6)
    corrupted = [f.at[0, : f.shape[1] // 4, : f.shape[2] // 4].multiply(-1.0) for f in feats]
    maps, scores = maps_fn(feats, corrupted, (64, 64))
    assert scores[0] > 0.05 and float(scores[1]) < 1e-6
    assert np.unravel_index(int(jnp.argmax(maps[0])), (64, 64))[0] < 32  # the top-left quarter was corrupted


def test_lss_layout_and_drop_path_rates_follow_the_official_grouping():
    assert [lss_layout(d) for d in (3, 4, 6, 2, 9)] == [(1, 3), (2, 2), (2, 3), (1, 2), (3, 3)]
    with pytest.raises(ValueError, match="depth 5 is not divisible by 3 or 2"):
        lss_layout(5)
    rates = drop_path_rates((3, 4, 6, 3), 0.2)
    flat = np.linspace(0, 0.2, 16)[::-1]
    assert rates == [[flat[0]], [flat[3], flat[4]], [flat[7], flat[8]], [flat[13]]]


def test_bad_inputs_are_named():
    model = build_mambaad(mambaad_model_config(**TINY))
    with pytest.raises(ValueError, match="divisible by 32; got 48x48"):
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 48, 48, 3), jnp.float32))
    wrong = build_mambaad(mambaad_model_config(**{**TINY, "decoder_dims": (64, 32, 16, 8)}))
    with pytest.raises(ValueError, match="decoder_dims"):
        jax.eval_shape(wrong.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    with pytest.raises(ValueError, match="unknown MambaAD encoder 'vgg16'"):
        jax.eval_shape(build_mambaad(mambaad_model_config(encoder="vgg16")).init, jax.random.key(0),
                       jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))


def test_config_mistakes_are_named_before_any_layer_is_traced(monkeypatch):
    """A bad depth of any stage, and decoder widths that do not fit the encoder (a resnet50 with the resnet34
    defaults), are said with the tuple to set, before the encoder is traced (tens of seconds on a CPU at full size)."""
    from ssm_jax.models import resnet

    def not_reached(*args, **kwargs):
        raise AssertionError("the encoder was traced before the config was checked")

    monkeypatch.setattr(resnet.ResNet, "__call__", not_reached)
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    late_depth = build_mambaad(mambaad_model_config(**{**TINY, "decoder_depths": (2, 2, 2, 5)}))
    with pytest.raises(ValueError, match=r"decoder depth 5 is not divisible by 3 or 2"):
        jax.eval_shape(late_depth.init, jax.random.key(0), images)
    bottleneck = build_mambaad(mambaad_model_config(**{**TINY, "encoder": "resnet50",
                                                        "decoder_dims": (512, 256, 128, 64)}))
    with pytest.raises(ValueError, match=r"decoder_dims \(512, 256, 128, 64\) do not reconstruct the resnet50 "
                                         r"features \(\(256, 512, 1024\) channels .*expected "
                                         r"decoder_dims=\(512, 1024, 512, 256\)"):
        jax.eval_shape(bottleneck.init, jax.random.key(0), images)
