"""The linear-recurrence primitive the tiled kernels scan with, against a float64 loop, inside and outside Pallas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels.selective_scan.recurrence import linear_recurrence


def loop_reference(a, b, axis, reverse):
    """(cumulative product of a, h) by an explicit float64 loop along ``axis``."""
    a, b = np.moveaxis(np.asarray(a, np.float64), axis, 0), np.moveaxis(np.asarray(b, np.float64), axis, 0)
    steps = range(len(a) - 1, -1, -1) if reverse else range(len(a))
    prod, h = np.ones_like(a[0]), np.zeros_like(b[0])
    prods, hs = np.empty_like(a), np.empty_like(b)
    for t in steps:
        prod, h = prod * a[t], a[t] * h + b[t]
        prods[t], hs[t] = prod, h
    return np.moveaxis(prods, 0, axis), np.moveaxis(hs, 0, axis)


def random_pair(shape):
    a = jax.random.uniform(jax.random.PRNGKey(0), shape, minval=0.2, maxval=1.0)
    b = jax.random.normal(jax.random.PRNGKey(1), shape)
    return a, b


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_loop(axis, reverse):
    a, b = random_pair((16, 8))
    prod, h = jax.jit(lambda a, b: linear_recurrence(a, b, axis=axis, reverse=reverse))(a, b)
    want_prod, want_h = loop_reference(a, b, axis, reverse)
    np.testing.assert_allclose(prod, want_prod, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=1e-5)


def test_inside_a_pallas_kernel_interpret_and_lowered_for_triton():
    """Interpret mode gives the loop's answer; the kernel also lowers through Pallas' Triton path (tt.scan)."""
    shape = (16, 8)

    def kernel(a_ref, b_ref, h_ref):
        _, h = linear_recurrence(plgpu.load(a_ref), plgpu.load(b_ref), axis=0, reverse=True)
        plgpu.store(h_ref, h)

    def call(a, b, interpret):
        return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(shape, jnp.float32), interpret=interpret,
                              compiler_params=plgpu.CompilerParams(num_warps=4))(a, b)

    a, b = random_pair(shape)
    np.testing.assert_allclose(call(a, b, True), loop_reference(a, b, 0, True)[1], rtol=1e-5, atol=1e-5)
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    text = jax.jit(lambda a, b: call(a, b, False)).trace(spec, spec).lower(lowering_platforms=("cuda",)).as_text()
    assert "triton" in text


def test_rejects_mismatched_operands():
    with pytest.raises(ValueError, match="must match"):
        linear_recurrence(jnp.ones((4, 2)), jnp.ones((4, 3)))
