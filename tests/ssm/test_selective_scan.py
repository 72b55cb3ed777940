"""Every selective_scan impl against the float64 NumPy recurrence, forward and gradients, plus bad input.

The forward and gradient comparisons are jitted: run eagerly, each primitive compiles on its own, about four times the
time on CPU. ``test_chunked_any_chunk_size`` and ``test_bfloat16_inputs_within_1e2`` call the scan eagerly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from ssm_jax.ssm import selective_scan
from tests.ssm.reference import random_scan_inputs, rel_err, selective_scan_numpy

IMPLS = ("sequential", "associative", "chunked")
OPTIONALS = ("D", "z", "delta_bias")

CASES = [
    # batch, length, dim, d_state, groups, optionals, softplus
    (2, 17, 5, 4, None, (), False),
    (1, 64, 8, 16, None, OPTIONALS, True),
    (3, 33, 6, 3, 2, ("D", "z"), True),
    (2, 130, 4, 8, 4, OPTIONALS, False),
    (1, 1, 3, 2, None, ("delta_bias",), True),
]


def _inputs(case, seed=0):
    batch, length, dim, d_state, groups, optionals, _ = case
    full = random_scan_inputs(np.random.default_rng(seed), batch, length, dim, d_state, groups)
    return {k: v for k, v in full.items() if k in ("u", "delta", "A", "B", "C") or k in optionals}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"b{c[0]}l{c[1]}d{c[2]}n{c[3]}g{c[4]}")
def test_forward_matches_float64_reference(impl, case):
    args = _inputs(case)
    softplus = case[-1]
    y_ref, last_ref = selective_scan_numpy(**args, delta_softplus=softplus)
    scan = jax.jit(lambda a: selective_scan(**a, delta_softplus=softplus, return_last_state=True, impl=impl,
                                            chunk_size=16))
    y, last = scan({k: jnp.asarray(v) for k, v in args.items()})
    assert y.dtype == jnp.float32 and y.shape == y_ref.shape and last.shape == last_ref.shape
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(last, last_ref) < 1e-5


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 200])
def test_chunked_any_chunk_size(chunk_size):
    args = _inputs(CASES[3])
    y_ref, last_ref = selective_scan_numpy(**args)
    y, last = selective_scan(**args, return_last_state=True, impl="chunked", chunk_size=chunk_size)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(last, last_ref) < 1e-5


def test_bfloat16_inputs_within_1e2():
    args = _inputs(CASES[1])
    args16 = {k: (jnp.asarray(v, jnp.bfloat16) if k in ("u", "delta", "B", "C", "z") else v) for k, v in args.items()}
    y_ref, _ = selective_scan_numpy(**{k: np.asarray(jnp.asarray(v, jnp.float32)) for k, v in args16.items()},
                                    delta_softplus=True)
    for impl in IMPLS:
        y = selective_scan(**args16, delta_softplus=True, impl=impl)
        assert y.dtype == jnp.bfloat16
        assert rel_err(y.astype(jnp.float32), y_ref) < 1e-2


def test_gradients_match_finite_differences():
    args = _inputs((1, 9, 3, 2, None, OPTIONALS, True))
    names = list(args)
    with jax.enable_x64(True):
        args = {k: jnp.asarray(v, jnp.float64) for k, v in args.items()}
        for impl in IMPLS:
            def f(*xs, impl=impl):
                return selective_scan(**dict(zip(names, xs)), delta_softplus=True, impl=impl, chunk_size=4)
            check_grads(jax.jit(f), tuple(args.values()), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[3]], ids=["plain", "groups", "bias"])
def test_gradients_agree_between_impls(case):
    args = {k: jnp.asarray(v) for k, v in _inputs(case, seed=1).items()}
    names = list(args)
    softplus = case[-1]
    weights = jnp.asarray(np.random.default_rng(2).standard_normal(args["u"].shape), jnp.float32)

    def loss(impl, *xs):
        y, last = selective_scan(**dict(zip(names, xs)), delta_softplus=softplus, impl=impl,
                                 return_last_state=True, chunk_size=16)
        return jnp.sum(y * weights) + jnp.sum(last)

    grad = jax.jit(jax.grad(loss, argnums=tuple(range(1, len(names) + 1))), static_argnums=0)
    grads = {impl: grad(impl, *args.values()) for impl in IMPLS}
    for impl in IMPLS[1:]:
        for name, g, g_ref in zip(names, grads[impl], grads["sequential"]):
            assert rel_err(g, g_ref) < 1e-4, (impl, name)


def test_jit_and_vmap():
    args = {k: jnp.asarray(v) for k, v in _inputs(CASES[2]).items()}
    y_ref = selective_scan(**args, delta_softplus=True, impl="sequential")
    jitted = jax.jit(lambda a: selective_scan(**a, delta_softplus=True, impl="chunked", chunk_size=8))
    assert rel_err(jitted(args), y_ref) < 1e-5
    batched = {k: v[None].repeat(2, 0) for k, v in args.items()}
    vmapped = jax.vmap(lambda a: selective_scan(**a, delta_softplus=True, impl="associative"))(batched)
    assert vmapped.shape == (2,) + y_ref.shape
    assert rel_err(vmapped[1], y_ref) < 1e-5


def test_chunk_size_from_numpy_and_the_options_static_under_jit():
    """A NumPy integer is a chunk size (a sweep's grid holds them); a bool or 0 is not. The options that are no arrays
    jit as static arguments, as README's "Using the scan" shows."""
    args = _inputs(CASES[2])
    want = selective_scan(**args, delta_softplus=True, impl="chunked", chunk_size=8)
    np.testing.assert_array_equal(selective_scan(**args, delta_softplus=True, impl="chunked",
                                                 chunk_size=np.int64(8)), want)
    for bad in (True, 0):
        with pytest.raises(ValueError, match=f"`chunk_size` is {bad!r}, expected a positive int"):
            selective_scan(**args, impl="chunked", chunk_size=bad)
    scan = jax.jit(selective_scan, static_argnames=("delta_softplus", "return_last_state", "impl", "chunk_size",
                                                    "sum_groups"))
    assert rel_err(scan(**args, delta_softplus=True, impl="chunked", chunk_size=8), want) < 1e-6


def test_auto_is_sequential_on_cpu():
    args = _inputs(CASES[0])
    assert np.array_equal(selective_scan(**args), selective_scan(**args, impl="sequential"))


@pytest.mark.parametrize(
    "override, match",
    [
        (dict(delta=np.zeros((2, 16, 5), np.float32)), r"`delta` has shape \(2, 16, 5\), expected \(2, 17, 5\)"),
        (dict(u=np.zeros((2, 5, 17), np.float32)),  # u transposed: delta is named, with the reason
         r"`delta` has shape \(2, 17, 5\), expected \(2, 5, 17\), the shape of `u` \(both \(batch, length, dim\)\)"),
        (dict(A=np.zeros((4, 4), np.float32)), r"`A` has shape \(4, 4\), expected \(5, d_state\)"),
        (dict(B=np.zeros((2, 17, 3), np.float32)), r"`B` has shape \(2, 17, 3\), expected \(2, 17, 4\)"),
        (dict(C=np.zeros((2, 17, 2, 4), np.float32)), r"`C` has 2 groups, expected a divisor of dim=5"),
        (dict(D=np.zeros(4, np.float32)), r"`D` has shape \(4,\), expected \(5,\)"),
        (dict(z=np.zeros((2, 17), np.float32)), r"`z` has shape \(2, 17\), expected \(2, 17, 5\)"),
        (dict(u=np.zeros((2, 17, 5), np.int32)), r"`u` has dtype int32, expected a floating dtype"),
        (dict(u=np.zeros((17, 5), np.float32)), r"`u` has shape \(17, 5\), expected \(batch, length, dim\)"),
        (dict(D=1.0), r"`D` must be an array, got float"),
        (dict(delta_bias=[0.0] * 5), r"`delta_bias` must be an array, got list"),
    ],
)
def test_bad_input_names_the_argument(override, match):
    args = {**_inputs(CASES[0]), **override}
    with pytest.raises(ValueError, match=match):
        selective_scan(**args)


def test_unknown_impl_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown impl 'fast'.*sequential, associative, chunked, pallas"):
        selective_scan(**_inputs(CASES[0]), impl="fast")


def test_softplus_matches_float64_over_the_whole_range():
    """The scan's softplus (max(x, 0) + log1p(exp(-|x|))) against float64 log(1 + exp(x)) from -100 to 100, its
    derivative against the float64 sigmoid (0.5 at 0, where max and abs have kinks), and inf and NaN passed on."""
    from ssm_jax.ssm.selective_scan import softplus

    x = np.concatenate([np.linspace(-100, 100, 2001), [0.0, 1e-8, -1e-8, 20.0, 88.0]]).astype(np.float32)
    want = np.logaddexp(x.astype(np.float64), 0.0)
    np.testing.assert_allclose(np.asarray(softplus(jnp.asarray(x))), want, rtol=2e-7, atol=1e-30)
    slope = np.asarray(jax.vmap(jax.grad(softplus))(jnp.asarray(x)))
    np.testing.assert_allclose(slope, 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-6, atol=1e-30)
    edge = np.asarray(softplus(jnp.asarray([np.inf, -np.inf, np.nan], jnp.float32)))
    assert edge[0] == np.inf and edge[1] == 0 and np.isnan(edge[2])
