"""The ``split`` design's chain over segments as one kernel (``kernels/selective_scan/chain.py``), in interpret mode,
against a float64 NumPy walk over the segments and against ``split``'s associative scans in XLA: forward from zero
and in reverse from a given adjoint, with padded channels and state lanes, and with segment counts that fill the
kernel's groups of segments and that leave the last group short, at the default channel width and segment groups and
at four channels a program (a whole block) with two segments a group (relative error 1e-6)."""

import numpy as np
import pytest
import jax.numpy as jnp

from kernels.selective_scan import chain, split
from kernels.selective_scan.common import Layout


def walk_numpy(total, dsum, A, start, reverse):
    """(entering, leaving) by walking the segments one by one in float64."""
    total, dsum, A = (np.asarray(x, np.float64) for x in (total, dsum, A))
    h = np.zeros(total[:, 0].shape) if start is None else np.asarray(start, np.float64)
    entering = np.zeros_like(total)
    n = total.shape[1]
    for s in (reversed(range(n)) if reverse else range(n)):
        entering[:, s] = h
        h = np.exp(dsum[:, s, :, None] * A) * h + total[:, s]
    return entering, h


def rel(x, ref):
    return float(np.linalg.norm(np.asarray(x, np.float64) - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("n_segments", [5, 16], ids=["short-last-group", "full-groups"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("block_d,unroll", [(chain.BLOCK_D, chain.UNROLL), (4, 2)], ids=["default", "4-wide-2"])
def test_chain_matches_numpy_and_the_associative_scans(n_segments, reverse, block_d, unroll):
    # 2 groups of 6 channels in blocks of 4 (padded channels), N = 5 (padded lanes)
    lay = Layout(batch=2, length=n_segments * 4, dim=12, groups=2, d_state=5, block_d=4, chunk=2, segment=4)
    assert lay.n_segments == n_segments and not lay.even_channels and not lay.even_state
    rng = np.random.default_rng(n_segments)
    total = jnp.asarray(rng.normal(size=(2, n_segments, 12, 5)), jnp.float32)
    dsum = jnp.asarray(rng.uniform(0.05, 1.0, size=(2, n_segments, 12)), jnp.float32)
    A = jnp.asarray(-np.exp(rng.normal(size=(12, 5))), jnp.float32)
    start = jnp.asarray(rng.normal(size=(2, 12, 5)), jnp.float32) if reverse else None
    entering, leaving = chain.chain(total, dsum, A, lay, reverse=reverse, start=start, interpret=True,
                                    block_d=block_d, unroll=unroll)
    ref_entering, ref_leaving = walk_numpy(total, dsum, A, start, reverse)
    assert rel(entering, ref_entering) < 1e-6 and rel(leaving, ref_leaving) < 1e-6
    if reverse:
        xla = split.entering_adjoints({"A": A}, total, dsum, start)
    else:
        xla, ends = split.entering_states({"A": A}, total, dsum)
        assert rel(ends[:, -1], ref_leaving) < 1e-6
    assert rel(xla, ref_entering) < 1e-6


@pytest.mark.parametrize("keyword", ["block_d", "unroll"])
def test_chain_widths_must_be_powers_of_two(keyword):
    lay = Layout(batch=1, length=8, dim=4, groups=1, d_state=2, block_d=4, chunk=2, segment=4)
    total, dsum, A = jnp.zeros((1, 2, 4, 2)), jnp.zeros((1, 2, 4)), -jnp.ones((4, 2))
    with pytest.raises(ValueError, match=f"{keyword}=3 must be a power of two"):
        chain.chain(total, dsum, A, lay, reverse=False, interpret=True, **{keyword: 3})
