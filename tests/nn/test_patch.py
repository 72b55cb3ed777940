"""PatchEmbed / PatchMerging shapes and the 2x2 concatenation order; DropPath."""

import jax
import jax.numpy as jnp
import numpy as np

from ssm_jax.nn import DropPath, PatchEmbed, PatchMerging

KEY = jax.random.key(0, impl="rbg")


def _shapes(module, x):
    variables = jax.eval_shape(module.init, KEY, x)
    return jax.eval_shape(module.apply, variables, x).shape, jax.tree.map(lambda a: a.shape, variables["params"])


def test_shapes():
    y, p = _shapes(PatchEmbed(8, patch_size=4), jnp.ones((2, 16, 12, 3)))
    assert y == (2, 4, 3, 8) and p["proj"]["kernel"] == (4, 4, 3, 8) and "norm" in p
    y, p = _shapes(PatchMerging(), jnp.ones((2, 4, 4, 2)))
    assert y == (2, 2, 2, 4) and p["reduction"]["kernel"] == (8, 4)
    assert _shapes(PatchMerging(out_dim=6), jnp.ones((2, 5, 7, 2)))[0] == (2, 3, 4, 6)  # odd sizes padded


def test_patch_merging_concatenation_order():
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 2)).astype(np.float32)
    v = {"params": {"norm": {"scale": jnp.ones(8), "bias": jnp.zeros(8)}, "reduction": {"kernel": jnp.eye(8)}}}
    y = jax.jit(PatchMerging(out_dim=8).apply)(v, x)
    cell = np.concatenate([x[0, 0, 0], x[0, 1, 0], x[0, 0, 1], x[0, 1, 1]])  # (0,0), (1,0), (0,1), (1,1) as Swin
    np.testing.assert_allclose(y[0, 0, 0], (cell - cell.mean()) / np.sqrt(cell.var() + 1e-6), rtol=1e-4, atol=1e-5)


def test_drop_path():
    x = jnp.ones((64, 3))
    m = DropPath(0.5)
    assert m.apply({}, x, deterministic=True) is x
    y = jax.jit(lambda x: m.apply({}, x, deterministic=False, rngs={"dropout": KEY}))(x)
    assert set(np.unique(np.asarray(y))) <= {0.0, 2.0} and 0 < int((y[:, 0] == 0).sum()) < 64
