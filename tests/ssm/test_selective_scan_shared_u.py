"""A u shared by the groups, (batch, L, D / G): every implementation gives what the float64 NumPy recurrence gives
on u tiled G times (sequential and Pallas also with bfloat16 activations), and the Pallas kernels (interpret mode,
even and masked channel blocks, with and without an order) the gradients of the tiled scan, u's summed over the
groups; a u of any other width is refused."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.ssm import selective_scan
from tests.ssm.reference import random_scan_inputs, rel_err, selective_scan_numpy

BATCH, LENGTH, GROUPS, N = 2, 9, 3, 4


def inputs(per_group: int) -> dict:
    x = random_scan_inputs(np.random.default_rng(7), BATCH, LENGTH, GROUPS * per_group, N, groups=GROUPS)
    rng = np.random.default_rng(8)
    x.update(D=rng.standard_normal(GROUPS * per_group).astype(np.float32),
             z=rng.standard_normal(x["u"].shape).astype(np.float32),
             delta_bias=(0.3 * rng.standard_normal(GROUPS * per_group)).astype(np.float32))
    x["u"] = x["u"][:, :, :per_group]  # one group's channels
    return x


def tiled(x: dict) -> dict:
    return dict(x, u=np.tile(x["u"], (1, 1, GROUPS)))


@pytest.mark.parametrize("impl", ["sequential", "associative", "chunked", "pallas"])
def test_shared_u_matches_the_float64_recurrence_on_tiled_u(impl):
    x = inputs(per_group=4)
    y, last = selective_scan(**x, delta_softplus=True, return_last_state=True, impl=impl, chunk_size=4)
    y_ref, last_ref = selective_scan_numpy(**tiled(x), delta_softplus=True)
    assert y.shape == (BATCH, LENGTH, GROUPS * 4) and y.dtype == jnp.float32
    assert rel_err(y, y_ref) < 1e-5 and rel_err(last, last_ref) < 1e-5


@pytest.mark.parametrize("impl", ["sequential", "pallas"])
def test_bfloat16_shared_u_matches_the_float64_recurrence(impl):
    """bfloat16 activations (u, delta, B, C, z) within the 1e-2 of DESIGN.md's bf16 tolerance; y comes back in u's
    dtype."""
    x = {k: v.astype(jnp.bfloat16) if k in ("u", "delta", "B", "C", "z") else v for k, v in inputs(4).items()}
    y = selective_scan(**x, delta_softplus=True, impl=impl)
    y_ref, _ = selective_scan_numpy(**tiled({k: np.asarray(v, np.float32) for k, v in x.items()}), delta_softplus=True)
    assert y.dtype == jnp.bfloat16 and rel_err(y, y_ref) < 1e-2


def _orders() -> np.ndarray:
    rng = np.random.default_rng(9)
    return np.stack([rng.permutation(LENGTH) for _ in range(GROUPS)])


@pytest.mark.parametrize("per_group,kernel,order", [
    pytest.param(4, dict(design="split", block_d=2, chunk=4), None, id="even-blocks",
                 marks=pytest.mark.slow),  # ~17 s here, and even blocks are also the order case's
    pytest.param(3, dict(design="serial", block_d=2, chunk=4), None, id="half-masked-blocks"),
    pytest.param(4, dict(design="split", block_d=(4, 2), chunk=4, unroll=2), "order", id="ss2d-orders"),
])
def test_pallas_gradients_equal_the_tiled_scans(per_group, kernel, order):
    from kernels.selective_scan import selective_scan_pallas

    x = {k: jnp.asarray(v) for k, v in inputs(per_group).items()}
    order = _orders() if order else None
    w = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, GROUPS * per_group))

    def loss(u, delta, B, C, D, z, bias, reference):
        if reference:  # the sequential scan of the tiled u, through jnp.tile's own gradient
            y = selective_scan(jnp.tile(u, (1, 1, GROUPS)), delta, x["A"], B, C, D, z, bias, delta_softplus=True,
                               impl="sequential", order=order)
        else:
            y = selective_scan_pallas(u, delta, x["A"], B, C, D, z, bias, delta_softplus=True,
                                      return_last_state=False, interpret=True, order=order, **kernel)
        return jnp.sum(jnp.sin(y) * w)

    args = [x[k] for k in ("u", "delta", "B", "C", "D", "z", "delta_bias")]
    value, grads = jax.value_and_grad(loss, range(7))(*args, False)
    value_ref, grads_ref = jax.value_and_grad(loss, range(7))(*args, True)
    assert rel_err(value, value_ref) < 1e-5
    for name, g, g_ref in zip(("u", "delta", "B", "C", "D", "z", "delta_bias"), grads, grads_ref):
        assert g.shape == g_ref.shape, name
        assert rel_err(g, g_ref) < 1e-4, name
    assert grads[0].shape == (BATCH, LENGTH, per_group)


def test_a_u_neither_full_nor_one_group_wide_is_refused():
    x = inputs(per_group=4)
    with pytest.raises(ValueError, match=r"`u` has shape \(2, 9, 2\).*shared by the 3 groups: \(2, 9, 4\)"):
        selective_scan(**dict(x, u=x["u"][:, :, :2]), impl="sequential")


def summed(y) -> np.ndarray:
    """(batch, L, G * d) -> (batch, L, d): the groups' outputs added, as ``sum_groups`` does."""
    y = np.asarray(y, np.float64)
    return y.reshape(*y.shape[:2], GROUPS, -1).sum(axis=2)


@pytest.mark.parametrize("impl", ["sequential", "associative", "chunked", "pallas"])
def test_sum_groups_matches_the_float64_recurrence_summed(impl):
    """``sum_groups``: y is the float64 recurrence's summed over the groups, (batch, L, D / G); the last state is
    every channel's, as without it."""
    x = inputs(per_group=4)
    y, last = selective_scan(**x, delta_softplus=True, return_last_state=True, impl=impl, chunk_size=4,
                             sum_groups=True)
    y_ref, last_ref = selective_scan_numpy(**tiled(x), delta_softplus=True)
    assert y.shape == (BATCH, LENGTH, 4) and y.dtype == jnp.float32 and last.shape == (BATCH, GROUPS * 4, N)
    assert rel_err(y, summed(y_ref)) < 1e-5 and rel_err(last, last_ref) < 1e-5


@pytest.mark.parametrize("kernel,order,gate", [
    pytest.param(dict(design="split", block_d=(4, 2), chunk=4, unroll=2), "order", None, id="ss2d-segments-orders"),
    pytest.param(dict(design="serial", block_d=2, chunk=4), None, True, id="masked-blocks-gate-in-kernel"),
    pytest.param(dict(design="split", block_d=2, chunk=4), None, "forward", id="gate-outside"),
])
def test_pallas_gradients_with_summed_groups_equal_the_sequential_scans(kernel, order, gate):
    """The kernels reading y's gradient one group wide (``Layout.shared_dy``), without a gate as SS2D runs them (u
    shared too; the split design's segment adjoints read it as well) and with the gate in the kernels (a full u,
    3 channels a group: masked blocks), and the gate outside them (the sum after it, in XLA): the gradients of the
    sequential scan summed by jnp."""
    from kernels.selective_scan import selective_scan_pallas

    per_group = 3 if kernel["design"] == "serial" else 4
    x = {k: jnp.asarray(v) for k, v in inputs(per_group).items()}
    if gate is True:
        x["u"] = jnp.tile(x["u"], (1, 1, GROUPS))
    names = ("u", "delta", "B", "C", "D", "delta_bias") + (("z",) if gate is not None else ())
    order = _orders() if order else None
    w = jax.random.normal(jax.random.key(2), (BATCH, LENGTH, per_group))

    def loss(*args, reference):
        a = dict(zip(names, args))
        common = (a["u"], a["delta"], x["A"], a["B"], a["C"], a["D"], a.get("z"), a["delta_bias"])
        if reference:
            y = selective_scan(*common, delta_softplus=True, impl="sequential", order=order)
            y = y.reshape(BATCH, LENGTH, GROUPS, per_group).sum(axis=2)
        else:
            y = selective_scan_pallas(*common, delta_softplus=True, return_last_state=False, interpret=True,
                                      order=order, gate_in_kernel=gate, sum_groups=True, **kernel)
        return jnp.sum(jnp.sin(y) * w)

    args = [x[k] for k in names]
    value, grads = jax.value_and_grad(functools.partial(loss, reference=False), range(len(names)))(*args)
    value_ref, grads_ref = jax.value_and_grad(functools.partial(loss, reference=True), range(len(names)))(*args)
    assert rel_err(value, value_ref) < 1e-5
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert g.shape == g_ref.shape, name
        assert rel_err(g, g_ref) < 1e-4, name


def test_a_delta_wider_than_u_says_why_A_must_be_as_wide():
    """u (2, 9, 4) and A sized to u's 4 channels, delta to 12: the error on A says that a delta wider than u reads u
    as shared, not only that A should have 12 rows."""
    x = inputs(per_group=4)
    with pytest.raises(ValueError, match=r"`A` has shape \(4, 4\), expected \(12, d_state\) \(`delta` \(2, 9, 12\) is "
                                         r"wider than `u` \(2, 9, 4\), which reads u as shared"):
        selective_scan(**dict(x, A=x["A"][:4], D=None, z=None, delta_bias=None), impl="sequential")
