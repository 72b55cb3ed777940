"""``split`` design: the sequence cut into segments, each walked by its own programs, so that a small
(batch, channel blocks) grid still fills the GPU (grid (batch, channel blocks, segments)).

Forward, in three passes: (1) ``summaries.states`` gives each segment's end state from zero and its decay;
(2) plain JAX chains them by an associative scan over the segments ((batch, n_segments, D, N), small) into the
state entering every segment (or, with ``Layout.chain_kernel``, one kernel walks the segments: ``chain.py``);
(3) the serial forward kernel walks each segment again from that state and writes y (and the checkpoints, which
come out identical to the serial design's). The backward mirrors it:
(1) ``summaries.adjoints`` walks each segment in reverse from a zero adjoint, (2) a reverse associative scan
gives the state adjoint entering each segment from the later ones (d last_state entering the last), (3) the
serial backward kernel runs per segment from it. Cost: the forward does about twice the work of one serial
pass; the backward adds a pass that reads delta, C, z and dy.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.selective_scan import backward as serial_backward
from kernels.selective_scan import chain
from kernels.selective_scan import forward as serial_forward
from kernels.selective_scan import summaries
from kernels.selective_scan.common import Layout, check_power_of_two

# Steps unrolled per chunk (and between checkpoints) when the sequence is one segment. With the one-warp kernels, 4
# beat 8 and 16 in forward+backward on all five benchmark shapes (registers 204 instead of 255, no spills; NOTES.md,
# "one warp"); against 2, timed interleaved, it was 5 % faster on mm-tiny-56 and within 3 % on 8-dir, mm-tiny-28 and
# mm-tiny-14, and 2 was 7-17 % faster on MambaAD's ad-32 and ad-16; MemoryMamba-tiny's training step ran at the same
# speed with either, with 40 % more device memory at 2 (NOTES.md, "Session 14").
UNROLL = 4
# The same when the sequence is cut into segments (the small grids): 2 took 3-17 % off forward+backward on all five
# such shapes measured (vim-s, mamba-768, long, vmamba-64x64, ad-64), fp32 and bf16, for the saved states of twice
# as many checkpoints (the scan's peak memory up 8-31 %, on grids whose activations are small; NOTES.md, "Session 13").
UNROLL_SEGMENTED = 2
# Steps per segment when the grid needs segments: 128 beat 256 on four of the five benchmark shapes (NOTES.md).
SEGMENT = 128
# Segments pay only when the (batch, channel blocks) grid alone leaves the GPU short of programs. From this many up,
# one segment (no summary pass, one read of the inputs) was the fastest on every model shape measured: mm-tiny-56
# (3,072 programs) forward+backward 10.4 ms against 12.9 at 256-step segments, mm-tiny-14 and ad-16 (4,096 and
# more) 2.5 and 1.2 against 3.8 and 1.6 at 128 (one H200, NOTES.md, "Segment length by grid").
FULL_GRID = 2048
# The forward kernels' channels per program by default, when that leaves their grid at least WIDE_FORWARD_GRID
# programs (else the backward's 16). 32 channels in a one-warp program take 25-33 % fewer instructions per (step,
# channel, state) (SASS, NOTES.md "Session 14"); back to back, forward 7-19 % and forward+backward 1-4 % faster on
# the five benchmark shapes, bf16 and fp32 (but 8-dir fp32's forward, even), and interleaved 8-16 % (forward) on
# mm-tiny-56 (1,536 programs) and ad-64, even on mm-tiny-28, but 23 % slower on ad-32, left 1,024 programs (one H200,
# NOTES.md, "Session 15"). The segments and checkpoints stay the backward's, which both directions share.
WIDE_FORWARD = 32
WIDE_FORWARD_GRID = 1536
# The same threshold for a forward that takes no gradient (``ops._design``'s "inference"). Since the forward kernels'
# later changes, ad-32's 1,024 programs at 32 channels ran that forward 12-13 % faster in fp32 and 17-18 % in bf16,
# in two leases; forward+backward moved +0.8-1.0 % (fp32) and -1.4-1.9 % (bf16), and MambaAD's fp32 train step
# 0.992x: so a differentiated forward keeps 1,536. With this rule MambaAD's inference at batch 16 ran 1.039x, its
# training 1.001x (interleaved, one H100 each, NOTES.md, "Session 62").
WIDE_INFERENCE_GRID = 1024
# A forward that takes no gradient, in a 2-byte dtype, with the whole sequence in one segment and a row of u for each
# batch row (not scanned in place), takes this many channels a program where that leaves it WIDE_FORWARD_GRID
# programs. On 8-dir (bf16, 512 rows x 1,024 steps x 192 channels: 1,536 programs at 64) the forward was 5.1 and 5.5 %
# faster in two leases of a lent H100 (2.88-2.91x the copy floor, against 3.05-3.07x). 64 lost or tied on every other
# shape measured: segmented (vim-s +1.2 %, long -0.5 %, vmamba-64x64 +31 %), in place (mm-tiny-56 +32 %, ad-32
# +38 %, mm-tiny-28 -3.3 %), and in float32 on all but ad-16 (NOTES.md, "Session 75").
WIDEST_INFERENCE = 64


def widest_inference(lay: Layout, itemsize: int, in_place: bool) -> bool:
    """Whether an inference forward of ``lay`` (its 32-channel layout) takes ``WIDEST_INFERENCE`` channels: also only
    where they divide a group's channels, so that no program is partly masked."""
    if (itemsize != 2 or in_place or lay.segment or lay.block_d != WIDE_FORWARD
            or lay.group_dim % WIDEST_INFERENCE):
        return False
    return math.prod(dataclasses.replace(lay, block_d=WIDEST_INFERENCE).grid) >= WIDE_FORWARD_GRID


def default_segment(lay: Layout) -> int:
    """Steps per segment when none is asked: the whole sequence once the grid alone has ``FULL_GRID`` programs
    (batch rows x channel blocks, per device), else ``SEGMENT``."""
    return pl.next_power_of_2(lay.length) if lay.batch * lay.n_blocks >= FULL_GRID else SEGMENT


def layout(lay: Layout, unroll: int | None = None) -> Layout:
    """Segments of ``lay.chunk`` steps (a power of two; capped at L rounded up to one), each walked in chunks
    of up to ``unroll`` steps (a power of two: the backward holds unroll + 1 state tiles in registers, and the
    forward saves a checkpoint every unroll steps; None: UNROLL_SEGMENTED with segments, else UNROLL). A sequence
    that fits in one segment gets the plain serial layout: with nothing to chain, the summary pass would be wasted
    work."""
    if unroll is not None:
        check_power_of_two("unroll", unroll)
    segment = min(lay.chunk, pl.next_power_of_2(lay.length))
    if unroll is None:
        unroll = UNROLL if segment >= lay.length else UNROLL_SEGMENTED
    chunk = min(unroll, segment)
    if segment >= lay.length:
        return dataclasses.replace(lay, chunk=chunk)
    return dataclasses.replace(lay, chunk=chunk, segment=segment)


def _compose(first, second):
    """The affine map x -> a x + b of ``first`` followed by that of ``second``."""
    (a1, b1), (a2, b2) = first, second
    return a1 * a2, a2 * b1 + b2


def _chain(decay, total, *, reverse: bool):
    """What leaves each segment when every segment s maps x -> decay[s] x + total[s] and zero enters the
    first (the last, when ``reverse``); segments on axis 1."""
    return jax.lax.associative_scan(_compose, (decay, total), reverse=reverse, axis=1)[1]


def entering_states(inputs: dict, total, dsum):
    """Forward pass (2): from each segment's end state from zero (``total``) and sum of delta (``dsum``), the
    state entering every segment (h_in) and the state leaving every segment (ends), (batch, n_segments, D, N)."""
    ends = _chain(jnp.exp(dsum[..., None] * inputs["A"]), total, reverse=False)
    return jnp.concatenate([jnp.zeros_like(ends[:, :1]), ends[:, :-1]], axis=1), ends


def entering_adjoints(inputs: dict, total, dsum, dlast):
    """Backward pass (2): from each segment's adjoint from zero (``total``) and sum of delta, the state adjoint
    entering every segment from the later ones (d last_state, or zeros when None, entering the last)."""
    decay = jnp.exp(dsum[..., None] * inputs["A"])
    if dlast is None:
        dlast = jnp.zeros_like(total[:, -1])
    else:
        total = total.at[:, -1].add(decay[:, -1] * dlast)
    starts = _chain(decay, total, reverse=True)
    return jnp.concatenate([starts[:, 1:], dlast[:, None]], axis=1)


def sum_segments(grads: dict, lay: Layout) -> dict:
    """The backward kernel's per-(row, segment) dA, dD, d delta_bias summed over segments, per batch row."""
    grads = dict(grads)
    for key in ("dA", "dD", "dbias"):
        if key in grads:
            grads[key] = grads[key].reshape(lay.batch, lay.n_segments, *grads[key].shape[1:]).sum(axis=1)
    return grads


def forward(inputs: dict, lay: Layout, *, delta_softplus: bool, save: str, interpret: bool, num_warps: int = 4):
    """Same contract as ``forward.forward`` for a layout made by ``layout``."""
    kw = dict(delta_softplus=delta_softplus, interpret=interpret, num_warps=num_warps)
    if not lay.segment:
        return serial_forward.forward(inputs, lay, save=save, **kw)
    total, dsum = summaries.states(inputs, lay, **kw)
    if lay.chain_kernel:
        h_in, last = chain.chain(total, dsum, inputs["A"], lay, reverse=False, interpret=interpret)
    else:
        h_in, ends = entering_states(inputs, total, dsum)
        last = ends[:, -1]
    out = serial_forward.forward(dict(inputs, h_in=h_in), lay, save="chunks" if save == "chunks" else "none", **kw)
    return (out, last[:, None]) if save == "last" else out


def backward(inputs: dict, lay: Layout, *, delta_softplus: bool, interpret: bool, num_warps: int = 8):
    """Same contract as ``backward.backward`` (dA, dD, dbias per batch row) for a layout made by ``layout``."""
    kw = dict(delta_softplus=delta_softplus, interpret=interpret, num_warps=num_warps)
    if not lay.segment:
        return serial_backward.backward(inputs, lay, **kw)
    inputs = dict(inputs)
    dlast = inputs.pop("dlast", None)
    total, dsum = summaries.adjoints(inputs, lay, **kw)
    if lay.chain_kernel:
        h_in, _ = chain.chain(total, dsum, inputs["A"], lay, reverse=True, start=dlast, interpret=interpret)
    else:
        h_in = entering_adjoints(inputs, total, dsum, dlast)
    return sum_segments(serial_backward.backward(dict(inputs, h_in=h_in), lay, **kw), lay)
