"""The kernels' ``order`` input (each group visits the sequence in its own order, as SS2D's directions do) against
the sequential scan's gathered copies put back in place (``selective_scan(order=)``, itself checked against the
float64 NumPy recurrence): values (1e-5) and every gradient (1e-4), for the
serial design and for split with several segments, with positions loaded in their chunk or one chunk ahead
(``prefetch_order``) or every load one chunk ahead (``prefetch_rows``), in interpret mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.selective_scan import selective_scan_pallas
from ssm_jax.ssm import selective_scan as ssm_scan
from tests.kernels.test_selective_scan_pallas import ALL_OPTIONS, make_inputs, rel_err

SHAPE = (2, 11, 6, 3, 4)  # batch, L, D, G (each group its own order), N
EVEN_SHAPE = (2, 16, 6, 3, 4)  # the same with L = 16: no step past L in 4-step segments or chunks


def orders(groups: int, length: int) -> np.ndarray:
    """Identity, reversed, and a fixed random permutation: one per group."""
    perms = [np.arange(length), np.arange(length)[::-1], np.random.default_rng(0).permutation(length)]
    return np.stack(perms[:groups]).astype(np.int32)


def gathered_scan(x: dict, order: np.ndarray, last: bool):
    """Reference: the sequential scan with the same order, which gathers each group into its order and puts y
    back (checked against the float64 NumPy recurrence in tests/ssm/test_selective_scan_order.py)."""
    return ssm_scan(**x, delta_softplus=True, return_last_state=last, impl="sequential", order=order)


# The default run takes the serial kernels both ways and split's default loads (rows ahead); each other load
# placement of split, and the serial kernels with rows ahead, in the slow run (6-11 s each here).
@pytest.mark.parametrize("blocks", [
    pytest.param(dict(design="serial", block_d=2, chunk=4, prefetch_rows=False), id="serial"),
    pytest.param(dict(design="split", block_d=2, chunk=4, unroll=2, prefetch_rows=False), id="split",
                 marks=pytest.mark.slow),
    pytest.param(dict(design="serial", block_d=2, chunk=4, prefetch_order=True, prefetch_rows=False),
                 id="serial-prefetched"),
    pytest.param(dict(design="split", block_d=2, chunk=4, unroll=2, prefetch_order=True, prefetch_rows=False),
                 id="split-prefetched", marks=pytest.mark.slow),
    pytest.param(dict(design="split", block_d=2, chunk=4, unroll=2, prefetch_order=True, hoist_loads=True,
                      prefetch_rows=False), id="split-prefetched-hoisted", marks=pytest.mark.slow),
    pytest.param(dict(design="serial", block_d=2, chunk=4, prefetch_rows=True), id="serial-rows-ahead",
                 marks=pytest.mark.slow),
    pytest.param(dict(design="split", block_d=2, chunk=4, unroll=2, prefetch_rows=True), id="split-rows-ahead")])
def test_order_matches_gathered_scan_values_and_gradients(blocks):
    check_order(SHAPE, blocks)


@pytest.mark.parametrize("blocks", [dict(design="serial", block_d=2, chunk=4),
                                    dict(design="split", block_d=2, chunk=4, unroll=2)], ids=["serial", "split"])
def test_order_on_an_even_layout_matches_gathered_scan(blocks):
    """L a whole number of segments and chunks, whole channel blocks, N a power of two: the kernels run without
    any load or store mask (``Layout.even_*``)."""
    check_order(EVEN_SHAPE, blocks)


def check_order(shape, blocks):
    """y, the last state and every gradient of the in-place scan against the gathered sequential scan."""
    x = make_inputs(5, *shape, **ALL_OPTIONS)
    order = orders(shape[3], shape[1])
    names = [k for k, v in x.items() if v is not None]
    w_y = jax.random.normal(jax.random.PRNGKey(1), x["u"].shape)
    w_s = jax.random.normal(jax.random.PRNGKey(2), (shape[0], shape[2], shape[4]))

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
    argnums = tuple(range(len(names)))
    (y, s), got = jax.jit(lambda *a: (outputs("pallas", *a), jax.grad(lambda *a: loss("pallas", *a), argnums)(*a)))(
        *arrays)
    (y_ref, s_ref), want = jax.jit(lambda *a: (outputs("gathered", *a),
                                               jax.grad(lambda *a: loss("gathered", *a), argnums)(*a)))(*arrays)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape, name
        assert rel_err(g, w) < 1e-4, name


def test_order_is_checked():
    x = make_inputs(5, *SHAPE)
    kw = dict(delta_softplus=False, return_last_state=False, interpret=True)
    with pytest.raises(ValueError, match=r"expected integers of shape \(groups, L\) = \(3, 11\)"):
        selective_scan_pallas(**x, **kw, order=orders(2, 11))


@pytest.mark.parametrize("prefetch", [dict(prefetch_order=False, prefetch_rows=False),
                                      dict(prefetch_order=True, prefetch_rows=False), dict(prefetch_rows=True)],
                         ids=["in-chunk", "positions-ahead", "rows-ahead"])
def test_order_changes_the_result_and_lowers_for_cuda(prefetch):
    """The order is honoured (without it the scan differs), and the ordered split kernels lower through Triton,
    with the positions loaded in their chunk or one ahead, or every load one ahead."""
    x = make_inputs(5, *SHAPE, **ALL_OPTIONS)
    order = orders(SHAPE[3], SHAPE[1])
    kw = dict(delta_softplus=True, return_last_state=False, design="split", chunk=4, **prefetch)
    y_ref = gathered_scan(x, order, last=False)
    assert rel_err(selective_scan_pallas(**x, **kw, interpret=True), y_ref) > 0.1

    def loss(u):
        return jnp.sum(selective_scan_pallas(**dict(x, u=u), **kw, interpret=False, order=order))

    text = jax.jit(jax.grad(loss)).trace(x["u"]).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("triton") >= 4
