"""MemoryMamba block layouts: scan_blocks and remat change neither outputs nor gradients; the layout conversion.

The reference is the default per-block layout (tested in test_memorymamba.py). Both layouts draw the same
stochastic-depth masks (one dropout key per stage, split over its blocks), so train mode with drop_path_rate > 0
is compared exactly like eval mode. Tolerance: float32, rtol 1e-5 / atol 1e-6 (outputs measured bit-identical on CPU).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.losses import memorymamba_loss
from ssm_jax.models import build_memorymamba, memorymamba_model_config
from ssm_jax.models.memorymamba import drop_path, stack_blocks, unstack_blocks

KEY = jax.random.key(0, impl="rbg")  # threefry init compiles for seconds on CPU
TINY = dict(depths=(1, 3), dims=(16, 32), d_state=2, coarse_size=8, fine_size=6, drop_path_rate=0.9)
IMAGES = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
LABELS = jnp.array([1, 3])
TOL = dict(rtol=1e-5, atol=1e-6)
stack, unstack = jax.jit(stack_blocks), jax.jit(unstack_blocks)  # eagerly, each leaf shape compiles on its own


def _model(**overrides):
    return build_memorymamba(memorymamba_model_config(5, **{**TINY, **overrides}))


@pytest.fixture(scope="module")
def params():
    """Per-block layout parameters of the tiny model (every layout/remat variant loads them, converted).

    Initialised in the scanned layout (compiles faster) and unstacked."""
    return unstack(jax.jit(_model(scan_blocks=True).init)(KEY, IMAGES)["params"])


@functools.lru_cache(maxsize=None)
def _run_fn(scan_blocks: bool, remat: str, with_eval: bool):
    """Jitted params -> (train outputs, gradient of the eq. 25 loss in train mode[, eval outputs])."""
    m = _model(scan_blocks=scan_blocks, remat=remat)

    def loss(p):
        out = m.apply({"params": p}, IMAGES, train=True, rngs={"dropout": KEY})
        return memorymamba_loss(out, LABELS, lambda_c=0.5, lambda_f=0.5, margin=0.5, temperature=0.1)[0], out

    def run(p):
        (_, train_out), grads = jax.value_and_grad(loss, has_aux=True)(p)
        return (train_out, grads) + ((m.apply({"params": p}, IMAGES),) if with_eval else ())

    return jax.jit(run)


def _run(params, scan_blocks: bool, remat: str = "none", with_eval: bool = False):
    """Outputs and gradients of a variant, with the gradient given back in the per-block layout."""
    train_out, grads, *eval_out = _run_fn(scan_blocks, remat, with_eval)(stack(params) if scan_blocks
                                                                          else params)
    return (train_out, unstack(grads) if scan_blocks else grads, *eval_out)


def _assert_trees_close(actual, expected, tol=TOL):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **tol), actual, expected)


@pytest.mark.slow  # 33 s on 2 cores (two compiles of the model's gradient); CI's default run is near its limit
def test_scanned_equals_unrolled_eval_train_and_gradients(params):
    ref_train, ref_grads, ref_eval = _run(params, scan_blocks=False, with_eval=True)
    train_out, grads, eval_out = _run(params, scan_blocks=True, with_eval=True)
    assert set(eval_out) == set(ref_eval) >= {"logits", "coarse_queries", "fine_features", "fine_memory"}
    per_block = [k for k in eval_out if k not in ("logits", "features", "feature_map")]
    assert all(len(eval_out[k]) == 4 for k in per_block)  # tuples over blocks
    _assert_trees_close(eval_out, ref_eval)
    _assert_trees_close(train_out, ref_train)
    _assert_trees_close(grads, ref_grads)
    assert not np.allclose(train_out["logits"], eval_out["logits"])  # stochastic depth did drop samples
    # every block of the scanned stage gets its own gradient (its parameters are not tied)
    g = [np.asarray(grads[f"stage1_block{j}"]["linear_in"]["kernel"]) for j in range(3)]
    assert not np.allclose(g[0], g[1]) and not np.allclose(g[1], g[2])


@pytest.mark.slow  # 22 s on 2 cores; the layout equivalence above stays in the default run
@pytest.mark.parametrize("scan_blocks", [False, True])
def test_remat_gives_the_same_outputs_and_gradients(params, scan_blocks):
    reference = _run(params, scan_blocks, with_eval=True)[:2]  # compiled by the test above when run together
    # float32 roundoff between two programs: with XLA's backend optimisation off (conftest) one gradient element
    # of 1,024 differed by 3e-6 (relative 5e-5) from the program without remat
    for ref, got in zip(reference, _run(params, scan_blocks, remat="block")):
        _assert_trees_close(got, ref, dict(rtol=1e-4, atol=1e-5))


def test_layout_conversion_round_trip_is_exact(params):
    stacked = stack(params)
    expected = jax.eval_shape(_model(scan_blocks=True).init, KEY, IMAGES)["params"]
    assert jax.tree.map(lambda a: a.shape, stacked) == jax.tree.map(lambda a: a.shape, expected)
    assert set(stacked) == {"patch_embed", "stage0_blocks", "stage1_downsample", "stage1_blocks", "norm", "head"}
    np.testing.assert_array_equal(stacked["stage1_blocks"]["linear_in"]["kernel"][2],
                                  params["stage1_block2"]["linear_in"]["kernel"])
    for back, original in ((unstack(stacked), params), (stack(unstack(stacked)), stacked)):
        assert jax.tree.structure(back) == jax.tree.structure(original)
        jax.tree.map(np.testing.assert_array_equal, back, original)


def test_drop_path_rate_and_scale():
    x = jnp.ones((20000, 1, 3))
    np.testing.assert_array_equal(drop_path(x, jnp.float32(0.0), KEY), x)
    y = np.asarray(drop_path(x, jnp.float32(0.3), KEY))
    assert set(np.unique(y)) == {0.0, np.float32(1) / (np.float32(1) - np.float32(0.3))}
    assert abs((y[:, 0, 0] == 0).mean() - 0.3) < 0.02  # 6 sigma of a binomial(20000, 0.3) fraction
    assert np.all(y == y[:, :1, :1])  # one decision per sample


def test_defaults_and_bad_values():
    m = _model()
    assert (m.scan_blocks, m.remat) == (False, "none")  # default: the per-block layout of existing checkpoints
    assert "stage1_block2" in jax.eval_shape(m.init, KEY, IMAGES)["params"]
    for field, value, match in (("scan_blocks", "yes", "scan_blocks must be True or False"),
                                ("remat", "full", "unknown remat 'full'; valid: none, block"),
                                ("drop_path_rate", 1.0, r"drop_path_rate=1.0; expected a value in \[0, 1\)")):
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(_model(**{field: value}).init, KEY, IMAGES)
    gap = {"stage0_block0": {"w": jnp.zeros(2)}, "stage0_block2": {"w": jnp.zeros(2)}}
    with pytest.raises(ValueError, match=r"stage0 has blocks \[0, 2\]; expected 0..1"):
        stack_blocks(gap)
