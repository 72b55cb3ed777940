"""The kernels' ``order`` input (each group visits the sequence in its own order, as SS2D's directions do) against
the same scan on explicitly gathered copies, scattered back: values (1e-5) and every gradient (1e-4), for the
serial design and for split with several segments, in interpret mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.selective_scan import selective_scan_pallas
from ssm_jax.ssm import selective_scan as ssm_scan
from tests.kernels.test_selective_scan_pallas import ALL_OPTIONS, make_inputs, rel_err

SHAPE = (2, 11, 6, 3, 4)  # batch, L, D, G (each group its own order), N


def orders(groups: int, length: int) -> np.ndarray:
    """Identity, reversed, and a fixed random permutation: one per group."""
    perms = [np.arange(length), np.arange(length)[::-1], np.random.default_rng(0).permutation(length)]
    return np.stack(perms[:groups]).astype(np.int32)


def gathered_scan(x: dict, order: np.ndarray, last: bool):
    """Reference: gather each group's channels and B/C rows into visiting order, scan, put y back in place."""
    groups = order.shape[0]
    group_dim = x["u"].shape[2] // groups
    inverse = np.argsort(order, axis=1)

    def visit(a, per_group_axis):  # (batch, L, ...) -> each group's slice taken along order[g]
        parts = [jnp.take(jnp.take(a, np.arange(g * group_dim, (g + 1) * group_dim), axis=2) if per_group_axis == 2
                          else a[:, :, g:g + 1], order[g], axis=1) for g in range(groups)]
        return jnp.concatenate(parts, axis=2)

    y = {k: v for k, v in x.items()}
    for key in ("u", "delta", "z"):
        if x.get(key) is not None:
            y[key] = visit(x[key], 2)
    y["B"], y["C"] = visit(x["B"], 3), visit(x["C"], 3)
    out = ssm_scan(**y, delta_softplus=True, return_last_state=last, impl="sequential")
    seq = out[0] if last else out
    placed = jnp.concatenate([jnp.take(seq[:, :, g * group_dim:(g + 1) * group_dim], inverse[g], axis=1)
                              for g in range(groups)], axis=2)
    return (placed, out[1]) if last else placed


@pytest.mark.parametrize("blocks", [dict(design="serial", block_d=2, chunk=4),
                                    dict(design="split", block_d=2, chunk=4, unroll=2)], ids=["serial", "split"])
def test_order_matches_gathered_scan_values_and_gradients(blocks):
    x = make_inputs(5, *SHAPE, **ALL_OPTIONS)
    order = orders(SHAPE[3], SHAPE[1])
    names = [k for k, v in x.items() if v is not None]
    w_y = jax.random.normal(jax.random.PRNGKey(1), x["u"].shape)
    w_s = jax.random.normal(jax.random.PRNGKey(2), (SHAPE[0], SHAPE[2], SHAPE[4]))

    def outputs(impl, *arrays):
        kw = dict(x, **dict(zip(names, arrays)))
        if impl == "pallas":
            return selective_scan_pallas(**kw, delta_softplus=True, return_last_state=True, interpret=True,
                                         order=order, **blocks)
        return gathered_scan(kw, order, last=True)

    def loss(impl, *arrays):
        y, s = outputs(impl, *arrays)
        return jnp.sum(y * w_y) + jnp.sum(s * w_s)

    arrays = [x[k] for k in names]
    (y, s), (y_ref, s_ref) = outputs("pallas", *arrays), outputs("gathered", *arrays)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5
    argnums = tuple(range(len(names)))
    got = jax.jit(jax.grad(lambda *a: loss("pallas", *a), argnums))(*arrays)
    want = jax.grad(lambda *a: loss("gathered", *a), argnums)(*arrays)
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape, name
        assert rel_err(g, w) < 1e-4, name


def test_order_is_checked():
    x = make_inputs(5, *SHAPE)
    kw = dict(delta_softplus=False, return_last_state=False, interpret=True)
    with pytest.raises(ValueError, match=r"expected integers of shape \(groups, L\) = \(3, 11\)"):
        selective_scan_pallas(**x, **kw, order=orders(2, 11))
    with pytest.raises(ValueError, match="not tiled"):
        selective_scan_pallas(**x, **kw, design="tiled", order=orders(3, 11))


def test_order_changes_the_result_and_lowers_for_cuda():
    """The order is honoured (without it the scan differs), and the ordered split kernels lower through Triton."""
    x = make_inputs(5, *SHAPE, **ALL_OPTIONS)
    order = orders(SHAPE[3], SHAPE[1])
    kw = dict(delta_softplus=True, return_last_state=False, design="split", chunk=4)
    y_ref = gathered_scan(x, order, last=False)
    assert rel_err(selective_scan_pallas(**x, **kw, interpret=True), y_ref) > 0.1

    def loss(u):
        return jnp.sum(selective_scan_pallas(**dict(x, u=u), **kw, interpret=False, order=order))

    text = jax.jit(jax.grad(loss)).trace(x["u"]).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("triton") >= 4
