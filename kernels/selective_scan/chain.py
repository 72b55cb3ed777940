"""The ``split`` design's chain over segments as one kernel: what enters every segment, from the segment summaries.

Segment s maps the state entering it, h, to exp(A dsum[s]) h + total[s] (``summaries.py``). One program per (batch
row, channel block) walks the segments in order (or in reverse, for the state adjoint), writing the state entering
each and the state leaving the last. This is ``split.entering_states`` / ``split.entering_adjoints`` in one launch,
where XLA's associative scan over the segment axis takes several small fusions (five on vmamba-64x64: 23 us of a
232 us forward on an H200, ncu, NOTES.md "Session 14"). The walk is serial in the segments, so their loads are issued
``UNROLL`` segments at a time, one group ahead of the work.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels.selective_scan import common
from kernels.selective_scan.common import F32, Layout

# Segments whose summaries are loaded together, a group ahead of the one being chained.
UNROLL = 32
# Channels per program at most, whatever the walk kernels take: the chain walks every segment of a row, so wider
# blocks mean fewer, longer programs. Two channels (one (channel, state) a lane at N = 16) with 32 segments a group,
# against the 16 and 8 of before: GPU time 0.62-0.64x on vmamba-64x64 (96 programs became 768) and 0.48-0.50x on
# long, forward and reverse (``benchmarks/chain_tune.py`` under ncu, one H200, NOTES.md "Session 35").
BLOCK_D = 2


def _kernel(*refs, names, lay: Layout, reverse: bool, unroll: int):
    r = dict(zip(names, refs))
    entering_ref, leaving_ref = refs[len(names):]
    p = common.program(dataclasses.replace(lay, segment=0))
    rates = common.load_rates(r["A"], p, lay)
    n, groups = lay.n_segments, pl.cdiv(lay.n_segments, unroll)

    def segments(k):
        """Group k's (segment, exists) in walking order: segments clamped into range, exists None when every group
        is full."""
        out = []
        for i in range(unroll):
            step = k * unroll + i
            s = (n - 1 - step) if reverse else step
            out.append((jnp.clip(s, 0, n - 1), None if n % unroll == 0 else step < n))
        return out

    def load(k):
        return tuple((common.load_matrix(r["total"], p, lay, index=(p.b, s)),
                      common.load_channels(r["dsum"], p, lay, index=(p.b, s))) for s, _ in segments(k))

    def group(k, carry):
        h, loaded = carry
        upcoming = load(jnp.minimum(k + 1, groups - 1))  # issued before this group's work; the last reloads itself
        for (s, valid), (total, dsum) in zip(segments(k), loaded):
            common.store_matrix(entering_ref, p, lay, h, index=(p.b, s), when=valid)
            stepped = common.fma(lay, common.decay(lay, dsum, rates), h, total)
            h = stepped if valid is None else jnp.where(valid, stepped, h)
        return h, upcoming

    h = common.load_matrix(r["start"], p, lay, index=(p.b,)) if "start" in r else \
        jnp.zeros((lay.block_d, lay.state_pad), F32)
    h, _ = jax.lax.fori_loop(0, groups, group, (h, load(0)))
    common.store_matrix(leaving_ref, p, lay, h, index=(p.b,))


def chain(total, dsum, A, lay: Layout, *, reverse: bool, start=None, interpret: bool, num_warps: int = 1,
          block_d: int = BLOCK_D, unroll: int = UNROLL, name: str = "selective_scan_split_chain"):
    """(entering (batch, n_segments, D, N), leaving (batch, D, N)), float32: the state entering every segment when
    zero (or ``start`` (batch, D, N)) enters the first (the last, when ``reverse``), and the state leaving the
    last (the first); ``total`` and ``dsum`` are the summary kernel's outputs for a segmented layout. ``block_d``
    caps the channels a program takes and ``unroll`` sets the segments loaded together (both powers of two;
    ``benchmarks/chain_tune.py`` times them, each under its own kernel ``name``)."""
    inputs = {"total": total, "dsum": dsum, "A": A, **({} if start is None else {"start": start})}
    lay = dataclasses.replace(lay, block_d=min(lay.block_d, common.check_power_of_two("block_d", block_d)))
    unroll = min(common.check_power_of_two("unroll", unroll), pl.next_power_of_2(lay.n_segments))
    return pl.pallas_call(
        functools.partial(_kernel, names=tuple(inputs), lay=lay, reverse=reverse, unroll=unroll),
        out_shape=[jax.ShapeDtypeStruct(total.shape, F32),
                   jax.ShapeDtypeStruct((lay.batch, lay.dim, lay.d_state), F32)],
        grid=(lay.batch, lay.n_blocks),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps),
        interpret=interpret,
        name=name,
    )(*inputs.values())
