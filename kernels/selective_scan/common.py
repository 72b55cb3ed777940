"""Pieces shared by the forward and backward selective-scan kernels.

Each program owns one (batch row, channel block) pair. Channel blocks never straddle a group of B/C, so a
program reads one (N,) row of B and of C per time step. Blocks are padded to powers of two (Triton needs
them) and loads and stores are masked where padding exists: padded channels, padded state lanes and time steps
past L are exact no-ops of the recurrence (delta = 0 gives decay 1 and drive 0). Where a layout has none of a
kind (``Layout.even_channels``, ``even_state``, ``even_steps``, known when the kernel is traced), the serial and
split kernels' loads and stores drop that mask: no predicate, no zero default, fewer instructions a step.

With ``Layout.segment`` set (the ``split`` design) the grid has a third axis: program (b, block, s) walks only
segment s, ``segment`` steps (a whole number of chunks) starting at step s * segment.

With an ``order`` input (G, L) int32 the programs of group g visit the sequence in the order order[g]: step t
reads and writes sequence position order[g, t] of every per-step array (u, delta, z, B, C, dy, y and the
gradients), so a 2-D map scanned in K directions (one group each) needs no gathered copy (SS2D's cross-scan and
cross-merge). Only the positions move: steps, chunks, segments and checkpoints stay in visiting order.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

F32 = jnp.float32
LOG2E = 1.4426950408889634  # exp(x) = exp2(x log2 e): the GPU's exponential instruction is base 2
LN2 = 0.6931471805599453  # log(x) = log2(x) ln 2, likewise


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static problem sizes and block sizes of one kernel launch."""

    batch: int
    length: int
    dim: int
    groups: int
    d_state: int
    block_d: int
    chunk: int
    segment: int = 0  # split design: steps per program, a multiple of chunk; 0: one program walks all L
    # serial and split kernels: load a chunk's inputs for all its steps before the first store. Triton cannot move
    # a load above a store that may alias it, so interleaved, each step waits out its loads' latency; hoisted,
    # the chunk waits once, for more registers (its steps' inputs held at once).
    hoist_loads: bool = False
    # serial and split kernels with an ``order``: load the next chunk's positions before this chunk's work and carry
    # them, so a chunk's row loads need not first wait for its position loads.
    prefetch_order: bool = False
    # forward and segment-summary kernels: load the next chunk's rows (and positions) before this chunk's work and
    # carry them, so a chunk's loads are in flight while the previous chunk computes (software pipelining, one chunk
    # deep), for a second chunk's inputs held in registers. The backward kernel, which holds a chunk's states, one
    # step deep inside its reverse walk.
    prefetch_rows: bool = False
    # forward and segment-summary kernels with ``prefetch_rows``: the walk takes two chunks an iteration, so the rows
    # loaded ahead alternate between two sets of registers and the loop's back edge copies none (with one set, a
    # ``MOV`` per value held; the fp32 vmamba-64x64 walk: 337 -> 300 loop instructions a chunk, NOTES.md "Session
    # 31"), for a loop body twice as long. ``loop_chunks`` says how many chunks such a walk's loop takes.
    pair_chunks: bool = False
    # paired walks: how many chunks ahead each chunk's rows are loaded, d + 1 chunks a loop with d + 1 sets of rows
    # held in registers: 1, or 2 for the segment-state kernel (``summaries.STATE_DEPTH``).
    prefetch_depth: int = 1
    # split design: the chain over segments as one kernel (``chain.py``), not XLA's associative scan.
    chain_kernel: bool = False
    # Compiled for an NVIDIA GPU (not interpreted): exp2 and multiply-adds as single PTX instructions (``ex2``,
    # ``fma``). XLA compiles Pallas' Triton kernels with floating-point contraction off and denormals kept, so
    # plain jnp gives a multiply and an add, and exp2 four instructions (a range check and two predicated
    # multiplies around the ex2): 16 and 48 of the forward kernel's 293 a 2-step chunk (vmamba-64x64, bf16, ncu).
    ptx: bool = False
    # Of every ``POLY_PACK`` decays a thread computes, how many the segment-state kernel (``poly_states``) and the
    # forward walk (``poly_walk``) take from ``exp2_poly`` on the FMA pipe instead of ``ex2.approx`` on the
    # special-function pipe, which the states kernel keeps 73-78 % busy (ncu, NOTES.md "Sessions 37 and 38"). 0: none.
    poly_states: int = 0
    poly_walk: int = 0
    # u holds one group's channels (batch, L, D / G), read by every group: channel g * D / G + j reads u[..., j]
    # (SS2D scanning one map in K directions), so no K-fold copy of it is made or read back (``load_u_row``).
    shared_u: bool = False
    # dy holds one group's channels, read by every group: y's gradient when the caller sums the groups' outputs
    # (``selective_scan(sum_groups=True)``, SS2D merging its K directions), not broadcast K-fold (``load_dy_row``).
    shared_dy: bool = False

    @property
    def group_dim(self) -> int:
        return self.dim // self.groups

    @property
    def blocks_per_group(self) -> int:
        return pl.cdiv(self.group_dim, self.block_d)

    @property
    def n_blocks(self) -> int:
        return self.groups * self.blocks_per_group

    @property
    def n_segments(self) -> int:
        return pl.cdiv(self.length, self.segment) if self.segment else 1

    @property
    def program_chunks(self) -> int:
        """Chunks one program walks."""
        return self.segment // self.chunk if self.segment else pl.cdiv(self.length, self.chunk)

    @property
    def n_chunks(self) -> int:
        """Chunks over the whole (segment-padded) sequence: the number of checkpoints."""
        return self.n_segments * self.program_chunks

    @property
    def state_pad(self) -> int:
        return pl.next_power_of_2(self.d_state)

    @property
    def even_channels(self) -> bool:
        """Every block's channels lie inside its group: no channel mask needed."""
        return self.group_dim % self.block_d == 0

    @property
    def even_state(self) -> bool:
        """N is a power of two: no state-lane mask needed."""
        return self.d_state == self.state_pad

    @property
    def even_steps(self) -> bool:
        """The walked steps (whole chunks, or whole segments) end exactly at L: no step is past it."""
        walked = self.n_segments * self.segment if self.segment else self.program_chunks * self.chunk
        return walked == self.length

    @property
    def loop_chunks(self) -> int:
        """Chunks an iteration of this kernel's walk: with ``pair_chunks`` (which the backward kernel, loading a step
        ahead inside its chunk, turns off) two, or three when loading two chunks ahead (``prefetch_depth``)."""
        return self.prefetch_depth + 1 if self.pair_chunks and self.prefetch_rows else 1

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.batch, self.n_blocks, self.n_segments) if self.segment else (self.batch, self.n_blocks)


def check_power_of_two(keyword: str, value: int) -> int:
    """value itself, once it is a power of two (Triton's blocks are, and the walks' unrolled chunks and segment
    groups); else a ValueError naming ``keyword``."""
    if value < 1 or value & (value - 1):
        raise ValueError(f"selective_scan_pallas: {keyword}={value} must be a power of two")
    return value


def make_layout(u, B, d_state: int, block_d: int | None, chunk: int) -> Layout:
    """Layout for inputs u (batch, L, D) and grouped B (batch, L, G, N); block_d defaults to <= 32 channels."""
    batch, length, dim = u.shape
    groups = B.shape[2]
    if block_d is None:
        block_d = min(32, pl.next_power_of_2(dim // groups))
    check_power_of_two("block_d", block_d)
    if chunk < 1:
        raise ValueError(f"selective_scan_pallas: chunk={chunk} must be positive")
    return Layout(batch, length, dim, groups, d_state, block_d, chunk)


class Program(NamedTuple):
    """Where this program sits: batch row, block index, first channel, group, lane masks, segment."""

    b: jax.Array
    block: jax.Array
    d0: jax.Array
    group: jax.Array
    dmask: jax.Array  # (block_d,) channel inside its group
    nmask: jax.Array  # (state_pad,) lane inside N
    seg: jax.Array | int  # segment (0 without segments)
    c0: jax.Array | int  # index of the segment's first chunk in the whole sequence
    order: object = None  # (G, L) int32 ref: the sequence positions each group visits (None: 0, 1, ..., L - 1)


def program(lay: Layout, order=None) -> Program:
    b = pl.program_id(0)
    block = pl.program_id(1)
    group = block // lay.blocks_per_group
    local0 = (block % lay.blocks_per_group) * lay.block_d
    dmask = local0 + jnp.arange(lay.block_d) < lay.group_dim
    nmask = jnp.arange(lay.state_pad) < lay.d_state
    seg = pl.program_id(2) if lay.segment else 0
    return Program(b, block, group * lay.group_dim + local0, group, dmask, nmask, seg, seg * lay.program_chunks,
                   order)


class At(NamedTuple):
    """Where step t reads and writes: its sequence position, and whether t < L."""

    pos: jax.Array | int
    valid: jax.Array


def at(p: Program, lay: Layout, t) -> At:
    """Step t's position, t or order[group, t] (steps past L read position L - 1, masked): computed once per step
    and handed to every row load and store of that step."""
    if p.order is None:
        return At(jnp.asarray(t, jnp.int32), t < lay.length)  # an array: interpret mode wants array indices
    step = jnp.asarray(jnp.minimum(t, lay.length - 1), jnp.int32)
    return At(plgpu.load(p.order.at[jnp.asarray(p.group, jnp.int32), step]), t < lay.length)


def walk(p: Program, lay: Layout, body, init, reverse: bool = False, load=None):
    """``fori_loop`` over this program's chunks: ``body(c, heres, carry, loaded) -> carry`` with c the chunk's index
    in the whole sequence (the last first when ``reverse``), heres the ``At`` of its steps and loaded None, or with
    ``lay.prefetch_rows`` and a ``load(here)`` given, ``load`` of every step of the chunk, issued one chunk earlier.
    With an order and ``lay.prefetch_order`` (or rows prefetched), the next chunk's positions are loaded before
    ``body`` runs and carried into it. With rows prefetched the loop takes ``lay.loop_chunks`` chunks an iteration
    (the chunks left over after it), issuing each chunk's loads ``lay.prefetch_depth`` chunks ahead."""
    n = lay.program_chunks
    rows = load is not None and lay.prefetch_rows

    def index(k):
        return p.c0 + (n - 1 - k if reverse else k)

    def steps(c):
        return [at(p, lay, c * lay.chunk + i) for i in range(lay.chunk)]

    if not rows and (p.order is None or not lay.prefetch_order):
        return jax.lax.fori_loop(0, n, lambda k, carry: body(index(k), steps(index(k)), carry, None), init)

    def ahead(k):
        """What chunk k's iteration receives: its steps' positions and, with rows prefetched, their loads."""
        heres = steps(index(k))
        return tuple(here.pos for here in heres), (tuple(load(here) for here in heres) if rows else None)

    def run(k, carry, received):
        """Chunk k's body on what ``ahead(k)`` loaded."""
        positions, loaded = received
        c = index(k)
        return body(c, [At(pos, c * lay.chunk + i < lay.length) for i, pos in enumerate(positions)], carry, loaded)

    def chunk(k, state):
        carry, received = state
        upcoming = ahead(jnp.minimum(k + 1, n - 1))  # issued before this chunk's work; the last reloads itself
        return run(k, carry, received), upcoming

    if not rows or lay.loop_chunks == 1:
        return jax.lax.fori_loop(0, n, chunk, (init, ahead(0)))[0]
    depth, last = lay.prefetch_depth, n - 1

    def rotation(j, state):
        """Chunks k .. k + depth of a loop iteration, each after issuing the loads of the chunk ``depth`` later. Every
        set of rows loaded ahead takes the registers of the set just used, so the back edge copies none; two chunks
        ahead (the segment-state kernel) hid the fp32 delta loads that one chunk left waiting (``ncu``, session 36)."""
        carry, held = state  # the loads of chunks k .. k + depth - 1
        k, held = (depth + 1) * j, list(held)
        for i in range(depth + 1):
            held.append(ahead(jnp.minimum(k + i + depth, last)))
            carry = run(k + i, carry, held.pop(0))
        return carry, tuple(held)

    start = (init, tuple(ahead(min(i, last)) for i in range(depth)))
    carry, held = jax.lax.fori_loop(0, n // (depth + 1), rotation, start)
    done = n - n % (depth + 1)
    for i in range(n % (depth + 1)):
        carry = run(done + i, carry, held[i])
    return carry


def _load(ref, mask):
    if mask is None:
        return plgpu.load(ref).astype(F32)
    return plgpu.load(ref, mask=mask, other=jnp.zeros((), ref.dtype)).astype(F32)


def _conjunction(shape, *masks):
    """The masks that are not None and-ed and broadcast to ``shape``; None when all are None (nothing to mask)."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    mask = present[0]
    for m in present[1:]:
        mask = mask & m
    return jnp.broadcast_to(mask, shape)


def _channel_mask(p: Program, lay: Layout):
    """(block_d,) channels inside their group, or None when all are (``Layout.even_channels``)."""
    return None if lay.even_channels else p.dmask


def _row_mask(p: Program, lay: Layout, here: At):
    return _conjunction((lay.block_d,), _channel_mask(p, lay), None if lay.even_steps else here.valid)


def _matrix_mask(p: Program, lay: Layout):
    rows = _channel_mask(p, lay)
    lanes = None if lay.even_state else p.nmask
    return _conjunction((lay.block_d, lay.state_pad), None if rows is None else rows[:, None],
                        None if lanes is None else lanes[None, :])


def load_channels(ref, p: Program, lay: Layout, index=()):
    """(block_d,) slice of a per-channel array (..., D) at leading ``index`` (a parameter (D,) without one)."""
    index = tuple(jnp.asarray(i, jnp.int32) for i in index)  # interpret mode wants array indices
    return _load(ref.at[(*index, pl.ds(p.d0, lay.block_d))], _channel_mask(p, lay))


def store_channels(ref, p: Program, lay: Layout, value, index=()):
    """(block_d,) per-channel values into (..., D) at leading ``index``."""
    index = tuple(jnp.asarray(i, jnp.int32) for i in index)  # interpret mode wants array indices
    plgpu.store(ref.at[(*index, pl.ds(p.d0, lay.block_d))], value.astype(ref.dtype), mask=_channel_mask(p, lay))


def _tile(ref, p: Program, lay: Layout, index):
    index = tuple(jnp.asarray(i, jnp.int32) for i in index)  # interpret mode wants array indices
    return ref.at[(*index, pl.ds(p.d0, lay.block_d), pl.ds(jnp.int32(0), lay.state_pad))]  # int32 under x64 too


def load_matrix(ref, p: Program, lay: Layout, index=()):
    """(block_d, state_pad) tile of a (..., D, N) array at leading ``index``."""
    return _load(_tile(ref, p, lay, index), _matrix_mask(p, lay))


def store_matrix(ref, p: Program, lay: Layout, value, index=(), when=None):
    """Store a (block_d, state_pad) tile at leading ``index``, and only ``when`` (a scalar condition) is true."""
    mask = _matrix_mask(p, lay)
    if when is not None:
        mask = _conjunction((lay.block_d, lay.state_pad), mask, when)
    plgpu.store(_tile(ref, p, lay, index), value.astype(ref.dtype), mask=mask)


def load_row(ref, p: Program, lay: Layout, here: At):
    """(block_d,) channels of a (batch, L, D) array at a step."""
    return _load(ref.at[p.b, here.pos, pl.ds(p.d0, lay.block_d)], _row_mask(p, lay, here))


def _load_shared_row(ref, p: Program, lay: Layout, here: At, shared: bool):
    """(block_d,) channels of a (batch, L, D) array at a step, or of a (batch, L, D / G) one ``shared`` by the
    groups: the same offsets inside the one group's channels it holds."""
    d0 = p.d0 - p.group * lay.group_dim if shared else p.d0
    return _load(ref.at[p.b, here.pos, pl.ds(d0, lay.block_d)], _row_mask(p, lay, here))


def load_u_row(ref, p: Program, lay: Layout, here: At):
    """(block_d,) channels of u at a step, shared by the groups with ``lay.shared_u``."""
    return _load_shared_row(ref, p, lay, here, lay.shared_u)


def load_dy_row(ref, p: Program, lay: Layout, here: At):
    """(block_d,) channels of y's gradient at a step, shared by the groups with ``lay.shared_dy``."""
    return _load_shared_row(ref, p, lay, here, lay.shared_dy)


def store_row(ref, p: Program, lay: Layout, here: At, value):
    plgpu.store(ref.at[p.b, here.pos, pl.ds(p.d0, lay.block_d)], value.astype(ref.dtype),
                mask=_row_mask(p, lay, here))


def _lane_mask(p: Program, lay: Layout, here: At):
    return _conjunction((lay.state_pad,), None if lay.even_state else p.nmask,
                        None if lay.even_steps else here.valid)


def load_group_row(ref, p: Program, lay: Layout, here: At):
    """(state_pad,) row of grouped B or C (batch, L, G, N) at a step, for this program's group."""
    return _load(ref.at[p.b, here.pos, p.group, pl.ds(jnp.int32(0), lay.state_pad)], _lane_mask(p, lay, here))


def store_block_row(ref, p: Program, lay: Layout, here: At, value):
    """(state_pad,) per-block partial of dB or dC into (batch, L, n_blocks, N)."""
    plgpu.store(ref.at[p.b, here.pos, p.block, pl.ds(jnp.int32(0), lay.state_pad)], value,
                mask=_lane_mask(p, lay, here))


def softplus(lay: Layout, x):
    """log(1 + e^x) = max(x, 0) + log1p(t), t = e^-|x| in (0, 1], without overflow. With ``lay.ptx`` from two
    special-function instructions (``ex2.approx``, ``lg2.approx``) where libdevice's log1pf and expf cost about 50
    (``kernel_resources.py``); log1p(t) for t < 1/16 as its series to t^5, since 1 + t loses t's low bits. Relative
    error up to about 1e-6, most of it the float32 rounding of |x| log2 e (jnp's log1p(exp) formula: 2e-7);
    interpret mode runs the same formula in jnp."""
    t = exp2(lay, -LOG2E * jnp.abs(x))
    series = jnp.full_like(t, 1 / 5)
    for k in (-1 / 4, 1 / 3, -1 / 2, 1.0):  # Horner: log1p(t) / t = 1 - t/2 + t^2/3 - t^3/4 + t^4/5
        series = fma(lay, series, t, k)
    log1p = jnp.where(t < 1 / 16, series * t, LN2 * log2(lay, 1.0 + t))
    return jnp.maximum(x, 0.0) + log1p


class Step(NamedTuple):
    """Inputs of one time step, float32: u, delta after bias/softplus (0 on masked lanes), and the
    pre-softplus delta (for its derivative), B row, and the validity mask of the channel lanes (None: all valid)."""

    u: jax.Array
    delta: jax.Array
    delta_pre: jax.Array
    B: jax.Array
    mask: jax.Array


def finish_delta(lay: Layout, p: Program, here: At, delta_pre, bias, delta_softplus: bool):
    """(delta after bias/softplus, 0 on masked lanes; delta before softplus; lane mask or None) from delta as
    loaded at a step."""
    mask = _row_mask(p, lay, here)
    if bias is not None:
        delta_pre = delta_pre + bias
    delta = softplus(lay, delta_pre) if delta_softplus else delta_pre
    return (delta if mask is None else jnp.where(mask, delta, 0.0)), delta_pre, mask


class RawStep(NamedTuple):
    """u, delta and B of a step as loaded, nothing computed from them yet. The walks load a chunk ahead
    (``common.walk``), and a value first used where it is loaded waits out the load there; so what is loaded ahead
    stays raw and ``finish_step`` discretises it in the iteration that runs the step."""

    u: jax.Array
    delta: jax.Array
    B: jax.Array


def load_raw_step(refs: dict, p: Program, lay: Layout, here: At) -> RawStep:
    """u, delta and B loaded at a step (``finish_step`` makes the ``Step``)."""
    return RawStep(load_u_row(refs["u"], p, lay, here), load_row(refs["delta"], p, lay, here),
                   load_group_row(refs["B"], p, lay, here))


def finish_step(lay: Layout, p: Program, here: At, raw: RawStep, bias, delta_softplus: bool) -> Step:
    """The ``Step`` of ``raw``: delta discretised (``finish_delta``); steps past L come back as identity steps."""
    delta, delta_pre, mask = finish_delta(lay, p, here, raw.delta, bias, delta_softplus)
    return Step(raw.u, delta, delta_pre, raw.B, mask)


def load_step(refs: dict, p: Program, lay: Layout, here: At, bias, delta_softplus: bool) -> Step:
    """Load u, delta and B at a step and discretise delta (``finish_step``)."""
    return finish_step(lay, p, here, load_raw_step(refs, p, lay, here), bias, delta_softplus)


def _instruction(lay: Layout, ptx: str, fallback, *args):
    """``fallback(*args)``, or with ``lay.ptx`` the same as one float32 PTX instruction per element (its
    operands broadcast to one shape), which interpret mode cannot run."""
    if not lay.ptx:
        return fallback(*args)
    shape = jnp.broadcast_shapes(*(jnp.shape(a) for a in args))
    operands = [jnp.broadcast_to(jnp.asarray(a, F32), shape) for a in args]
    out, = plgpu.elementwise_inline_asm(ptx, args=operands, constraints=",".join(["=f"] + ["f"] * len(operands)),
                                        pack=1, result_shape_dtypes=[jax.ShapeDtypeStruct(shape, F32)])
    return out


def exp2(lay: Layout, x):
    """2^x; on the GPU ``ex2.approx.ftz`` alone (a result below 2^-126 flushes to 0, a decay that small is 0)."""
    return _instruction(lay, "ex2.approx.ftz.f32 $0, $1;", jnp.exp2, x)


# 2^f on [-1/2, 1/2] as a degree-5 polynomial in Horner form, fitted to relative error: evaluated in float32 with
# fused multiply-adds it is within 1.6e-7 of 2^f (1.3 ulp), as close as ``ex2.approx`` (2^-22, PTX ISA).
EXP2_POLY = (1.0, 0.6931468844413757, 0.24022237956523895, 0.05550891533493996, 0.009671698324382305,
             0.0013219078537076712)
EXP2_POLY_FLOOR = -125.5  # the lowest exponent kept: 2^-125.5 stands in for the 0 that ex2.approx.ftz gives below
ROUNDER = 12582912.0  # 1.5 * 2^23: x + ROUNDER rounds x to an integer held in the sum's low mantissa bits
POLY_PACK = 8  # decays per inline-assembly instance in ``mixed_exp2`` (elements a thread holds must be a multiple)


def _f32_hex(value: float) -> str:
    """A float32 constant as PTX writes it exactly: ``0f`` and its eight hex digits (1.0 is ``0f3F800000``)."""
    return "0f" + np.float32(value).view(np.uint32).item().to_bytes(4, "big").hex().upper()


def exp2_poly(x):
    """2^x for x up to 128 (a decay's is <= 0) from multiply-adds alone, in jnp the values ``_exp2_poly_ptx``
    computes: x clamped to ``EXP2_POLY_FLOOR`` (a NaN too: the step's drive delta u B still carries it), split as
    k + f with k = round(x) (half to even, as the PTX's ``ROUNDER`` sum rounds; XLA would simplify that sum away),
    2^f from ``EXP2_POLY``, and k added to the result's exponent bits."""
    x = jnp.maximum(jnp.asarray(x, F32), EXP2_POLY_FLOOR)
    k = jnp.round(x)
    f = x - k
    p = jnp.full_like(f, EXP2_POLY[-1])
    for c in EXP2_POLY[-2::-1]:
        p = p * f + c
    k_bits = jax.lax.shift_left(k.astype(jnp.int32), jnp.int32(23))
    return jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(p, jnp.int32) + k_bits, F32)


def _exp2_poly_ptx(out: str, x: str) -> str:
    """PTX computing ``out`` = ``exp2_poly(x)`` (operands like "$0"), in the registers ``mixed_exp2``'s block declares.
    The shift by 23 drops ROUNDER's own bits, leaving round(x) in the exponent field."""
    c = [_f32_hex(v) for v in EXP2_POLY]
    lines = [f"max.f32 px, {x}, {_f32_hex(EXP2_POLY_FLOOR)};",
             f"add.rn.f32 pr, px, {_f32_hex(ROUNDER)};",
             f"sub.rn.f32 pk, pr, {_f32_hex(ROUNDER)};",
             "sub.rn.f32 pf, px, pk;",
             f"fma.rn.f32 pp, pf, {c[5]}, {c[4]};"]
    lines += [f"fma.rn.f32 pp, pp, pf, {ci};" for ci in reversed(c[:4])]
    lines += ["mov.b32 pj, pr;", "shl.b32 pj, pj, 23;", "mov.b32 pb, pp;", "add.s32 pb, pb, pj;",
              f"mov.b32 {out}, pb;"]
    return " ".join(lines)


def mixed_exp2(lay: Layout, x, poly: int):
    """2^x (x up to 128) with ``poly`` of every ``POLY_PACK`` elements a thread holds from ``exp2_poly`` (FMA pipe) and
    the rest from ``ex2.approx`` (special-function pipe): one inline-assembly block per ``POLY_PACK`` elements. Which
    elements share a block is Triton's layout; both are within about 2e-7 of 2^x. Interpret mode runs ``exp2_poly``
    on every element."""
    if not poly:
        return exp2(lay, x)
    if not lay.ptx:
        return exp2_poly(x)
    n = POLY_PACK
    body = [f"ex2.approx.ftz.f32 ${i}, ${n + i};" for i in range(n - poly)]
    body += [_exp2_poly_ptx(f"${i}", f"${n + i}") for i in range(n - poly, n)]
    asm = ("{ .reg .f32 px, pr, pk, pf, pp; .reg .b32 pj, pb; " + " ".join(body) + " }")
    out, = plgpu.elementwise_inline_asm(asm, args=[jnp.asarray(x, F32)], constraints=",".join(["=f"] * n + ["f"] * n),
                                        pack=n, result_shape_dtypes=[jax.ShapeDtypeStruct(jnp.shape(x), F32)])
    return out


def log2(lay: Layout, x):
    """log2(x) for x > 0; on the GPU ``lg2.approx.ftz`` alone."""
    return _instruction(lay, "lg2.approx.ftz.f32 $0, $1;", jnp.log2, x)


def fma(lay: Layout, a, b, c):
    """a * b + c, on the GPU one fused multiply-add (one rounding)."""
    return _instruction(lay, "fma.rn.f32 $0, $1, $2, $3;", lambda a, b, c: a * b + c, a, b, c)


def load_rates(ref, p: Program, lay: Layout):
    """A log2(e), the (block_d, state_pad) tile the decays are computed from: exp(delta A) = exp2(delta A log2 e)
    is one ``ex2.approx`` instruction on the GPU, where ``exp`` lowers to libdevice's exact expf (about nine)."""
    return load_matrix(ref, p, lay) * LOG2E


def reciprocal(lay: Layout, x):
    """1 / x; on the GPU ``rcp.approx.ftz`` alone (at most 1 ulp off) where a division is a correctly rounded
    ``div.rn`` of about ten instructions."""
    return _instruction(lay, "rcp.approx.ftz.f32 $0, $1;", lambda v: 1.0 / v, x)


def sigmoid(lay: Layout, x):
    """1 / (1 + e^-x) through ``exp2`` and ``reciprocal`` (two special-function instructions; ``jax.nn.sigmoid``
    lowers to libdevice's expf and a division)."""
    return reciprocal(lay, 1.0 + exp2(lay, -LOG2E * x))


def decay(lay: Layout, delta, rates, poly: int = 0):
    """exp(delta A) per (channel, state) for a step's (block_d,) delta, from ``load_rates``' tile; ``poly`` of every
    ``POLY_PACK`` from the FMA-pipe polynomial (``mixed_exp2``)."""
    return mixed_exp2(lay, delta[:, None] * rates, poly)


def advance(lay: Layout, x, step: Step, rates, poly: int = 0):
    """One step of the recurrence: x <- exp(delta*A) * x + delta*u*B (``rates`` from ``load_rates``; ``poly`` as in
    ``decay``)."""
    return fma(lay, decay(lay, step.delta, rates, poly), x, (step.delta * step.u)[:, None] * step.B[None, :])
