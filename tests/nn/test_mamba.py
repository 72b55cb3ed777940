"""MambaMixer: shapes and parameter names, causality, implementations agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.nn import MambaMixer


def test_mixer_causal_and_impls_agree():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 12, 8)), jnp.float32)
    seq = MambaMixer(8, d_state=4, scan_impl="sequential")
    assoc = MambaMixer(8, d_state=4, scan_impl="associative")
    variables = jax.jit(seq.init)(jax.random.key(1, impl="rbg"), x)
    assert set(variables["params"]) == {"in_proj", "conv1d", "x_proj", "dt_proj", "A_log", "D", "out_proj"}
    x2 = x.at[:, 7:].add(1.0)

    @jax.jit
    def run(v):
        return seq.apply(v, x), assoc.apply(v, x), assoc.apply(v, x2)

    y_seq, y_assoc, y_changed = run(variables)
    assert y_seq.shape == x.shape
    np.testing.assert_allclose(y_assoc, y_seq, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y_changed[:, :7], y_assoc[:, :7], rtol=1e-6, atol=1e-7)  # causal
    assert not np.allclose(y_changed[:, 7:], y_assoc[:, 7:])


def test_input_shape_is_checked_and_expand_may_be_fractional():
    mixer = MambaMixer(8, d_state=2, expand=1.5, scan_impl="sequential")
    variables = mixer.init(jax.random.key(0), jnp.ones((1, 5, 8)))
    assert variables["params"]["A_log"].shape == (12, 2)
    with pytest.raises(ValueError, match=r"MambaMixer: input has shape \(2, 3, 3, 8\), expected \(batch, length, "
                                         r"d_model=8\)"):
        mixer.apply(variables, jnp.ones((2, 3, 3, 8)))
