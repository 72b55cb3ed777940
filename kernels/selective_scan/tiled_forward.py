"""Tiled forward kernel: each program scans ``chunk`` time steps at once, in parallel across its threads.

Grid (batch, channel blocks), like the serial kernel, but a program loads whole (chunk, block_d) tiles of u,
delta and z and (chunk,) columns of B and C, and for each state index n runs one parallel linear recurrence
(``recurrence.linear_recurrence``, a Triton ``tt.scan``) over the tile's time axis; the state entering the tile
is added afterwards as decay_cumprod * carry. Only the N carries (block_d,) cross from one tile to the next, so
the serial chain is one step per tile instead of one per time step. The (batch, L, D, N) states are never
written: depending on ``save``, nothing, the last state, or the state after every tile (the backward's
checkpoints).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels.selective_scan import common, tiles
from kernels.selective_scan.common import F32, Layout
from kernels.selective_scan.recurrence import linear_recurrence

SAVE_MODES = ("none", "last", "chunks")


def _kernel(*refs, names, lay: Layout, delta_softplus: bool, save: str):
    r = dict(zip(names, refs))
    y_ref = refs[len(names)]
    p = common.program(lay)
    N = lay.d_state
    A = [tiles.load_channels(r["A"], p, lay, column=n) for n in range(N)]
    skip = tiles.load_channels(r["D"], p, lay) if "D" in r else None
    bias = tiles.load_channels(r["delta_bias"], p, lay) if "delta_bias" in r else None

    def chunk(c, carries):
        t0 = c * lay.chunk
        u = tiles.load_tile(r["u"], p, lay, t0)
        delta, _ = tiles.discretise(tiles.load_tile(r["delta"], p, lay, t0), bias, delta_softplus,
                                    tiles.tile_mask(p, lay, t0), lay)
        drive = delta * u
        y = u * tiles.per_channel(skip, lay) if skip is not None else jnp.zeros_like(u)
        out = []
        for n in range(N):
            B = tiles.per_time(tiles.load_state_column(r["B"], p, lay, t0, n), lay)
            decay, h = linear_recurrence(jnp.exp(delta * tiles.per_channel(A[n], lay)), drive * B,
                                         axis=tiles.time_axis(lay))
            h = h + decay * tiles.per_channel(carries[n], lay)
            y = y + h * tiles.per_time(tiles.load_state_column(r["C"], p, lay, t0, n), lay)
            out.append(tiles.at_step(h, lay, lay.chunk - 1))  # steps past L are identities: this is the tile's end state
            if save == "chunks":
                tiles.store_channels(refs[-1], p, lay, out[-1], lead=(p.b, c), column=n)
        if "z" in r:
            z = tiles.load_tile(r["z"], p, lay, t0)
            y = y * z * jax.nn.sigmoid(z)
        tiles.store_tile(y_ref, p, lay, t0, y)
        return tuple(out)

    zeros = tuple(jnp.zeros((lay.block_d,), F32) for _ in range(N))
    last = jax.lax.fori_loop(0, lay.n_chunks, chunk, zeros)
    if save == "last":
        for n in range(N):
            tiles.store_channels(refs[-1], p, lay, last[n], lead=(p.b, 0), column=n)


def forward(inputs: dict, lay: Layout, *, delta_softplus: bool, save: str, interpret: bool,
            num_warps: int = 4):
    """Run the tiled forward kernel; returns y (batch, L, D) in u's dtype and, for save != "none", the saved
    states (batch, 1 or n_chunks, D, N) float32."""
    if save not in SAVE_MODES:
        raise ValueError(f"save={save!r}, expected one of {SAVE_MODES}")
    u = inputs["u"]
    length = tiles.padded_length(lay)
    out_shape = [jax.ShapeDtypeStruct((lay.batch, length, lay.dim), u.dtype)]
    if save != "none":
        n_saved = lay.n_chunks if save == "chunks" else 1
        out_shape.append(jax.ShapeDtypeStruct((lay.batch, n_saved, lay.dim, lay.d_state), F32))
    names = tuple(inputs)
    kernel = functools.partial(_kernel, names=names, lay=lay, delta_softplus=delta_softplus, save=save)
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=lay.grid,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps),
        interpret=interpret,
        name="selective_scan_tiled_fwd",
    )(*inputs.values())
    y = outs[0] if length == lay.length else outs[0][:, :lay.length]
    return y if save == "none" else (y, outs[1])
