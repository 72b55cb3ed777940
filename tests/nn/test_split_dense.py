"""SplitDense against nn.Dense + jnp.split: the same parameter (name, shape, initial values), outputs and
gradients, and no concatenate in the gradient's program (the point of it)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ssm_jax.nn.split_dense import SplitDense
from tests.jaxpr_equations import equations

SIZES = (5, 3, 4)


def _pair():
    return SplitDense(SIZES), nn.Dense(sum(SIZES), use_bias=False)


def test_same_parameter_outputs_and_gradients_as_a_dense_cut_in_blocks():
    split, dense = _pair()
    x = jax.random.normal(jax.random.key(0), (2, 7, 6))
    p_split, p_dense = split.init(jax.random.key(1), x), dense.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, p_split) == {"params": {"kernel": (6, 12)}}
    np.testing.assert_array_equal(p_split["params"]["kernel"], p_dense["params"]["kernel"])
    bounds = np.cumsum(SIZES)[:-1]
    w = [jax.random.normal(jax.random.key(2 + i), (2, 7, s)) for i, s in enumerate(SIZES)]

    def loss_split(p, x):
        return sum(jnp.sum(jnp.sin(o) * wi) for o, wi in zip(split.apply(p, x), w))

    def loss_dense(p, x):
        return sum(jnp.sum(jnp.sin(o) * wi) for o, wi in zip(jnp.split(dense.apply(p, x), bounds, axis=-1), w))

    outs, refs = split.apply(p_split, x), jnp.split(dense.apply(p_dense, x), bounds, axis=-1)
    assert [o.shape for o in outs] == [(2, 7, s) for s in SIZES]
    for o, r in zip(outs, refs):
        np.testing.assert_allclose(o, r, rtol=1e-6, atol=1e-6)
    g, g_ref = jax.grad(loss_split, (0, 1))(p_split, x), jax.grad(loss_dense, (0, 1))(p_dense, x)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_activations_keep_a_float32_parameter():
    layer = SplitDense(SIZES, dtype=jnp.bfloat16)
    x = jnp.ones((3, 6))
    p = layer.init(jax.random.key(0), x)
    assert p["params"]["kernel"].dtype == jnp.float32
    assert all(o.dtype == jnp.bfloat16 for o in layer.apply(p, x))


def _primitives(jaxpr) -> set:
    return {eqn.primitive.name for eqn in equations(jaxpr)}


def test_the_input_gradient_concatenates_nothing():
    """d x sums one matmul per block; the cut Dense concatenates the blocks' gradients into one first."""
    split, dense = _pair()
    x = jnp.ones((4, 6))
    p = split.init(jax.random.key(1), x)
    grad_x = lambda layer, out: jax.make_jaxpr(jax.grad(lambda x: sum(jnp.sum(o ** 2) for o in out(layer, x))))(x)
    split_out = lambda layer, x: layer.apply(p, x)
    dense_out = lambda layer, x: jnp.split(layer.apply(p, x), np.cumsum(SIZES)[:-1], axis=-1)
    assert "concatenate" not in _primitives(grad_x(split, split_out).jaxpr)
    assert "concatenate" in _primitives(grad_x(dense, dense_out).jaxpr)
