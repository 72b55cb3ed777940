"""The kernels' special functions (``kernels.selective_scan.common``) in their jnp form, the one interpret mode runs,
against float64 NumPy: the same formulas the GPU evaluates with ``ex2``/``lg2``/``rcp.approx``."""

import numpy as np
import jax.numpy as jnp

from kernels.selective_scan import common
from kernels.selective_scan.common import Layout

JNP = Layout(batch=1, length=1, dim=1, groups=1, d_state=1, block_d=1, chunk=1)  # ptx False: the jnp fallbacks


def _relative(got, ref):
    return np.max(np.abs(np.asarray(got, np.float64) - ref) / np.abs(ref))


def test_softplus_matches_float64_across_both_branches():
    """log1p(e^-|x|) is a series below t = 1/16 (|x| > 2.77) and lg2(1 + t) above; both sides, the switch and the
    far tails stay within 2e-6 relative (float32 rounding of |x| log2 e is most of it)."""
    x = np.concatenate([np.linspace(-40, 40, 200_001), np.log(1 / 16) + np.linspace(-1e-3, 1e-3, 2001),
                        -np.log(1 / 16) + np.linspace(-1e-3, 1e-3, 2001)]).astype(np.float32)
    got = common.softplus(JNP, jnp.asarray(x))
    assert _relative(got, np.logaddexp(0.0, x.astype(np.float64))) < 2e-6
    assert np.all(np.isfinite(np.asarray(common.softplus(JNP, jnp.asarray([-1e30, 1e30], jnp.float32)))))


def test_sigmoid_and_reciprocal_match_float64():
    x = np.linspace(-80, 80, 100_001).astype(np.float32)
    x64 = x.astype(np.float64)
    assert _relative(common.sigmoid(JNP, jnp.asarray(x)), 1 / (1 + np.exp(-x64))) < 1e-5
    v = np.logspace(-30, 30, 10_001).astype(np.float32)
    assert _relative(common.reciprocal(JNP, jnp.asarray(v)), 1 / v.astype(np.float64)) < 1e-7
