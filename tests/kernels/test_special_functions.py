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


def test_exp2_polynomial_matches_float64_and_the_ptx_sequence():
    """The PTX of ``exp2_poly`` (the decays ``poly_exp`` moves to the FMA pipe), emulated in float32 NumPy (rounding
    by the 1.5 * 2^23 sum, Horner with fused multiply-adds, the integer added to the exponent bits by a shift), is
    within 2e-7 of 2^x from the floor 2^-125.5 (below it, clamped to it) up to 2^127, the decays' x <= 0 and more;
    jnp's form, which interpret mode runs, within 2 ulp of it (its multiply-adds may round twice)."""
    x = np.concatenate([np.linspace(-130, 127, 400_001), -np.logspace(-9, 2, 4001), [0.0, -6.5, -0.5]])
    x = x.astype(np.float32)
    clamped = np.maximum(x, np.float32(common.EXP2_POLY_FLOOR))
    rounded = (clamped + np.float32(common.ROUNDER)).astype(np.float32)
    f = (clamped - (rounded - np.float32(common.ROUNDER))).astype(np.float32)
    c = np.asarray(common.EXP2_POLY, np.float32).astype(np.float64)
    p = np.full_like(f, np.float32(c[-1]))
    for ci in c[-2::-1]:
        p = (p.astype(np.float64) * f + ci).astype(np.float32)  # one rounding a step: a fused multiply-add
    emulated = (p.view(np.int32) + (rounded.view(np.int32) << 23)).view(np.float32)
    assert _relative(emulated, np.exp2(clamped.astype(np.float64))) < 2e-7
    got = np.asarray(common.exp2_poly(jnp.asarray(x)))
    np.testing.assert_array_max_ulp(got, emulated, maxulp=2)
    ptx = common._exp2_poly_ptx("$0", "$1")
    assert all(common._f32_hex(v) in ptx for v in (*common.EXP2_POLY[1:], common.ROUNDER, common.EXP2_POLY_FLOOR))
