"""MemoryMamba: output dict shapes, jit/vmap/grad through the loss, ablation switches, similarity variants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.losses import cross_entropy, memorymamba_loss
from ssm_jax.models import build_memorymamba, memorymamba_model_config, memorymamba_presets
from ssm_jax.models.memorymamba import similarity
from tests.host_checks import finite_on_host

KEY = jax.random.key(0, impl="rbg")  # threefry init compiles for seconds on CPU
TINY = dict(depths=(1, 1), dims=(16, 32), d_state=4, coarse_size=8, fine_size=6)
IMAGES = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)


def _model(**overrides):
    return build_memorymamba(memorymamba_model_config(5, **{**TINY, **overrides}))


def _shapes(tree):
    return jax.tree.map(lambda a: a.shape, tree)


@pytest.fixture(scope="module")
def params():
    """Parameters of the tiny model, shared: drop path and the similarity kind add none of their own."""
    return jax.jit(_model().init)(KEY, IMAGES)["params"]


def test_output_shapes():
    m = _model()
    variables = jax.eval_shape(m.init, KEY, IMAGES)
    out = _shapes(jax.eval_shape(lambda v: m.apply(v, IMAGES, train=False), variables))
    assert out == {
        "logits": (2, 5), "features": (2, 32), "feature_map": (2, 4, 4, 32),
        "coarse_queries": ((2, 8), (2, 8)), "coarse_banks": ((8, 16), (8, 32)),
        "fine_features": ((2, 8, 8, 16), (2, 4, 4, 32)), "fine_memory": ((2, 8, 8, 16), (2, 4, 4, 32)),
        "fine_banks": ((6, 16), (6, 32)),
    }
    bf16 = _model(dtype="bfloat16")
    out = jax.eval_shape(lambda v: bf16.apply(v, IMAGES), variables)
    assert out["logits"].dtype == jnp.float32 and out["features"].dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(jax.eval_shape(bf16.init, KEY, IMAGES)))


def test_images_without_a_batch_axis_are_named():
    model = _model()
    with pytest.raises(ValueError, match=r"MemoryMamba: images have shape \(32, 32, 3\), expected \(batch, height, "
                                         r"width, channels\) \(NHWC\)"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.ones((32, 32, 3)))


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_channels_first_images_are_named(stem):
    """(2, 3, 32, 32) would otherwise read as 3 rows of 32 channels: the conv stem took it without a word."""
    with pytest.raises(ValueError, match=r"images have shape \(2, 3, 32, 32\), which reads as \(batch, channels, "
                                         r"height, width\) \(NCHW\).*transpose\(0, 2, 3, 1\)"):
        jax.eval_shape(_model(stem=stem).init, KEY, jnp.ones((2, 3, 32, 32)))


def test_jit_vmap_grad(params):
    m = _model(drop_path_rate=0.3)
    labels = jnp.array([1, 3])

    def loss(params):
        out = m.apply({"params": params}, IMAGES, train=True, rngs={"dropout": KEY})
        return memorymamba_loss(out, labels, lambda_c=0.5, lambda_f=0.5, margin=0.5, temperature=0.1)

    @jax.jit
    def run(params):  # one compilation: eval forward, per-image vmap, training loss and its gradient
        logits = m.apply({"params": params}, IMAGES)["logits"]
        per_image = jax.vmap(lambda x: m.apply({"params": params}, x[None])["logits"][0])(IMAGES)
        return logits, per_image, jax.value_and_grad(loss, has_aux=True)(params)

    logits, per_image, ((total, parts), grads) = run(params)
    np.testing.assert_allclose(per_image, logits, rtol=1e-5, atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(logits))) and bool(jnp.isfinite(total))
    assert float(parts["cls"]) != float(cross_entropy(logits, labels))  # stochastic depth: on only in training
    grads = finite_on_host(grads)
    for name in ("coarse_memory", "fine_memory", "fine_proj", "fusion", "ss2d"):  # every part is trained
        assert float(sum(np.abs(g).sum() for g in jax.tree.leaves(grads["stage1_block0"][name]))) > 0, name


@pytest.mark.parametrize("coarse,fine,fusion", [(True, True, True), (False, True, True), (True, False, True),
                                                (True, True, False), (False, False, False)])
def test_ablation_switches_change_the_parameter_tree(coarse, fine, fusion):
    m = _model(use_coarse_memory=coarse, use_fine_memory=fine, use_fusion=fusion)
    variables = jax.eval_shape(m.init, KEY, IMAGES)
    block = variables["params"]["stage0_block0"]
    assert ("coarse_memory" in block) == coarse
    assert ("fine_memory" in block) == fine and ("fine_proj" in block) == fine
    assert ("memory_conv" in block) == (coarse or fine)
    assert ("fusion" in block) == (fusion and (coarse or fine))
    if fusion and coarse and fine:
        assert set(block["fusion"]) == {"gain_c", "gain_f"}
    assert {"linear_in", "ss2d", "norm", "linear_out"} <= set(block)
    out = jax.eval_shape(lambda v: m.apply(v, IMAGES), variables)
    assert ("coarse_queries" in out) == coarse and ("fine_memory" in out) == fine


def test_similarity_variants_run(params):
    models = {kind: _model(similarity=kind) for kind in ("cos", "l1", "l2")}

    @jax.jit
    def run(params):
        return {kind: m.apply({"params": params}, IMAGES)["logits"] for kind, m in models.items()}

    logits = run(params)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in logits.values())
    assert not np.allclose(logits["l1"], logits["cos"]) and not np.allclose(logits["l2"], logits["l1"])


def test_similarity_values():
    a, b = jnp.array([[3.0, 4.0], [1.0, 0.0]]), jnp.array([[3.0, 4.0], [0.0, 2.0]])
    np.testing.assert_allclose(similarity(a, b, "cos"), [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(similarity(a, b, "l1"), [1.0, 1 / (1 + 1.5)], rtol=1e-6)
    np.testing.assert_allclose(similarity(a, b, "l2"), [1.0, 1 / (1 + np.sqrt(2.5))], rtol=1e-5)


def test_build_presets_and_errors():
    for name, preset in memorymamba_presets.items():
        m = build_memorymamba(memorymamba_model_config(6, preset=name))
        assert (m.depths, m.dims) == (preset["depths"], preset["dims"])
    assert build_memorymamba({"num_classes": 3, "preset": "base", "depths": [1, 1, 1, 1]}).depths == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="unknown"):
        build_memorymamba({"num_classes": 3, "coarse_sz": 4})
    with pytest.raises(ValueError, match="num_classes"):
        build_memorymamba({"preset": "tiny"})
    with pytest.raises(ValueError, match="unknown preset"):
        build_memorymamba({"num_classes": 3, "preset": "huge"})


def test_fused_directions_field_keeps_outputs(params):
    """``fused_directions`` (default True: directions scanned in place) and False (gathered) give the same logits
    through different computations (the field reaches the SS2D layers)."""
    models = {f: _model(fused_directions=f) for f in (True, False)}
    logits = {f: jax.jit(m.apply)({"params": params}, IMAGES)["logits"] for f, m in models.items()}
    np.testing.assert_allclose(logits[True], logits[False], rtol=1e-5, atol=1e-5)
    jaxprs = {f: str(jax.make_jaxpr(m.apply)({"params": params}, IMAGES)) for f, m in models.items()}
    assert jaxprs[True] != jaxprs[False]


def test_convolutional_stem_and_downsampling():
    """``stem="conv"`` / ``downsample="conv"`` swap the patchify and the merging for VMamba v2's convolutions: the
    same token grids and outputs, the modules' own parameters, and a clear error for an unknown name."""
    m = _model(stem="conv", downsample="conv")
    variables = jax.eval_shape(m.init, KEY, IMAGES)
    params = _shapes(variables["params"])
    assert params["patch_embed"]["conv1"]["kernel"] == (3, 3, 3, 8) and params["patch_embed"]["conv2"]["kernel"] == (
        3, 3, 8, 16)
    assert params["stage1_downsample"]["conv"]["kernel"] == (3, 3, 16, 32)
    out = _shapes(jax.eval_shape(lambda v: m.apply(v, IMAGES), variables))
    assert out["fine_features"] == ((2, 8, 8, 16), (2, 4, 4, 32)) and out["logits"] == (2, 5)
    with pytest.raises(ValueError, match="unknown stem 'convolution'; valid: patch, conv"):
        _model(stem="convolution").init(KEY, IMAGES)
    with pytest.raises(ValueError, match="unknown downsample 'pool'"):
        _model(downsample="pool").init(KEY, IMAGES)
    with pytest.raises(ValueError, match="patch_size 8"):
        _model(stem="conv", patch_size=8).init(KEY, IMAGES)
