"""``selective_scan(order=)``: every implementation against the float64 NumPy recurrence run on explicitly
gathered per-group copies and put back in place (relative error 1e-5), and the checks on ``order``."""

import jax
import numpy as np
import pytest

from ssm_jax.ssm import selective_scan
from tests.ssm.reference import rel_err, selective_scan_numpy

BATCH, LENGTH, DIM, GROUPS, N = 2, 9, 6, 3, 4


def inputs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    bld = (BATCH, LENGTH, DIM)
    return dict(u=rng.standard_normal(bld, np.float32), delta=0.5 * rng.standard_normal(bld).astype(np.float32),
                A=-np.exp(rng.standard_normal((DIM, N))).astype(np.float32),
                B=rng.standard_normal((BATCH, LENGTH, GROUPS, N)).astype(np.float32),
                C=rng.standard_normal((BATCH, LENGTH, GROUPS, N)).astype(np.float32),
                D=rng.standard_normal(DIM).astype(np.float32),
                z=rng.standard_normal(bld).astype(np.float32),
                delta_bias=0.5 * rng.standard_normal(DIM).astype(np.float32))


ORDER = np.stack([np.arange(LENGTH), np.arange(LENGTH)[::-1], np.random.default_rng(1).permutation(LENGTH)])


def reference(x: dict):
    """Each group's channels, B and C gathered into its order, the NumPy recurrence, y put back in place."""
    per = DIM // GROUPS
    gathered = dict(x)
    for key in ("u", "delta", "z"):
        gathered[key] = np.concatenate([x[key][:, ORDER[g], g * per:(g + 1) * per] for g in range(GROUPS)], axis=2)
    for key in ("B", "C"):
        gathered[key] = np.stack([x[key][:, ORDER[g], g] for g in range(GROUPS)], axis=2)
    y_seq, last = selective_scan_numpy(**gathered, delta_softplus=True)
    y = np.empty_like(y_seq)
    for g in range(GROUPS):
        y[:, ORDER[g], g * per:(g + 1) * per] = y_seq[:, :, g * per:(g + 1) * per]
    return y, last


@pytest.mark.parametrize("impl", ["sequential", "associative", "chunked", "pallas"])
def test_order_matches_gathered_reference(impl):
    x = inputs()
    y, last = jax.jit(lambda x: selective_scan(**x, delta_softplus=True, return_last_state=True, impl=impl,
                                               chunk_size=4, order=ORDER))(x)
    y_ref, last_ref = reference(x)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(last, last_ref) < 1e-5


def test_order_shape_and_dtype_are_checked():
    x = inputs()
    with pytest.raises(ValueError, match=r"`order` has shape \(3, 8\).*of shape \(groups, L\) = \(3, 9\)"):
        selective_scan(**x, order=ORDER[:, :8])
    with pytest.raises(ValueError, match="dtype float32"):
        selective_scan(**x, order=ORDER.astype(np.float32))


@pytest.mark.parametrize("impl", ["sequential", "pallas"])
def test_an_order_that_is_not_a_permutation_is_refused(impl):
    """A repeated position scans a step twice and skips another; one out of range reads outside the sequence."""
    x = inputs()
    repeated, outside = ORDER.copy(), ORDER.copy()
    repeated[2, 1] = repeated[2, 0]
    outside[1, 0] = LENGTH + 5
    for bad, row in ((repeated, 2), (outside, 1)):
        with pytest.raises(ValueError, match=rf"`order` row {row} is not a permutation of 0..{LENGTH - 1}"):
            selective_scan(**x, impl=impl, order=bad)


def test_a_traced_order_with_numpy_inputs():
    """An order passed into a jitted function is traced: the inputs, NumPy arrays, are gathered by it all the same."""
    x = inputs()
    y = jax.jit(lambda order: selective_scan(**x, delta_softplus=True, impl="sequential", order=order))(ORDER)
    assert rel_err(y, reference(x)[0]) < 1e-5


def test_an_order_closed_over_under_jit_is_checked():
    """As README's recipe has it: a NumPy order captured by the jitted function is a constant, so it is checked."""
    bad = ORDER.copy()
    bad[0, 0] = LENGTH + 5
    x = inputs()
    with pytest.raises(ValueError, match=r"`order` row 0 is not a permutation"):
        jax.jit(lambda u: selective_scan(**{**x, "u": u}, impl="sequential", order=bad))(x["u"])


def test_an_empty_sequence_scans_to_nothing():
    x = {k: v[:, :0] if k in ("u", "delta", "z", "B", "C") else v for k, v in inputs().items()}
    for impl in ("sequential", "associative", "chunked", "pallas"):
        y, last = selective_scan(**x, return_last_state=True, impl=impl)
        assert y.shape == (BATCH, 0, DIM) and last.shape == (BATCH, DIM, N) and not np.asarray(last).any()
        summed = selective_scan(**x, impl=impl, sum_groups=True)
        assert summed.shape == (BATCH, 0, DIM // x["B"].shape[2])


def test_an_empty_batch_scans_to_nothing():
    """No rows (a filtered batch came out empty): every impl, the Pallas kernel included, returns empty outputs."""
    x = {k: v[:0] if k in ("u", "delta", "z", "B", "C") else v for k, v in inputs().items()}
    for impl in ("sequential", "associative", "chunked", "pallas"):
        y, last = selective_scan(**x, return_last_state=True, impl=impl, order=ORDER)
        assert y.shape == (0, LENGTH, DIM) and last.shape == (0, DIM, N), impl
