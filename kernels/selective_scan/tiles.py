"""Time tiles for the tiled kernels: a program loads ``chunk`` time steps x ``block_d`` channels at once.

A tile is held as (chunk, block_d), or as (block_d, chunk) with ``Layout.time_last`` (then Triton's layout gives
each thread consecutive time steps, so a scan along time is mostly within threads); the helpers below hide the
orientation from the kernels.

Tiles at t0 >= 0 are plain slices (masked past L; the outputs are allocated with the time axis padded to whole
tiles, so stores never leave the buffer). Tiles shifted by one step (t0 - 1, t0 + 1) are gathers with clipped
row indices and a validity mask: Pallas interpret mode clamps a slice that starts before 0, a gather does not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels.selective_scan.common import F32, Layout, Program, softplus


def padded_length(lay: Layout) -> int:
    return lay.n_chunks * lay.chunk


def _load(ref, mask):
    return plgpu.load(ref, mask=mask, other=jnp.zeros((), ref.dtype)).astype(F32)


def _rows(lay: Layout, t0, shift: int = 0):
    rows = t0 + shift + jnp.arange(lay.chunk)
    return rows, (rows >= 0) & (rows < lay.length)


def load_tile(ref, p: Program, lay: Layout, t0, shift: int = 0):
    """(chunk, block_d) float32 tile of a (batch, L, D) array at rows t0 + shift + i; zero where masked."""
    rows, valid = _rows(lay, t0, shift)
    mask = valid[:, None] & p.dmask[None, :]
    if shift == 0:
        tile = _load(ref.at[p.b, pl.ds(t0, lay.chunk), pl.ds(p.d0, lay.block_d)], mask)
    else:
        cols = jnp.minimum(p.d0 + jnp.arange(lay.block_d), lay.dim - 1)
        tile = _load(ref.at[p.b, jnp.clip(rows, 0, lay.length - 1)[:, None], cols[None, :]], mask)
    return tile.T if lay.time_last else tile


def store_tile(ref, p: Program, lay: Layout, t0, value):
    _, valid = _rows(lay, t0)
    value = value.T if lay.time_last else value
    plgpu.store(ref.at[p.b, pl.ds(t0, lay.chunk), pl.ds(p.d0, lay.block_d)], value.astype(ref.dtype),
                mask=valid[:, None] & p.dmask[None, :])


def time_axis(lay: Layout) -> int:
    return 1 if lay.time_last else 0


def per_time(v, lay: Layout):
    """Broadcast a (chunk,) vector over a tile's channels."""
    return v[None, :] if lay.time_last else v[:, None]


def per_channel(v, lay: Layout):
    """Broadcast a (block_d,) vector over a tile's time steps."""
    return v[:, None] if lay.time_last else v[None, :]


def sum_time(tile, lay: Layout):
    return jnp.sum(tile, axis=time_axis(lay))


def sum_channels(tile, lay: Layout):
    return jnp.sum(tile, axis=1 - time_axis(lay))


def load_state_column(ref, p: Program, lay: Layout, t0, n: int, shift: int = 0):
    """(chunk,) float32 column n of grouped B or C (batch, L, G, N) for this program's group."""
    rows, valid = _rows(lay, t0, shift)
    if shift == 0:
        return _load(ref.at[p.b, pl.ds(t0, lay.chunk), p.group, _index(n)], valid)
    return _load(ref.at[p.b, jnp.clip(rows, 0, lay.length - 1), p.group, _index(n)], valid)


def store_block_column(ref, p: Program, lay: Layout, t0, n: int, value):
    """(chunk,) column n of a per-channel-block partial (batch, L_padded, n_blocks, N)."""
    _, valid = _rows(lay, t0)
    plgpu.store(ref.at[p.b, pl.ds(t0, lay.chunk), p.block, _index(n)], value, mask=valid)


def _index(i):
    return jnp.asarray(i, jnp.int32)  # interpret mode wants array indices, not Python ints


def _channel_index(p: Program, lay: Layout, lead, column):
    return (*map(_index, lead), pl.ds(p.d0, lay.block_d), *(() if column is None else (_index(column),)))


def load_channels(ref, p: Program, lay: Layout, lead=(), column: int | None = None):
    """(block_d,) float32 channels of ``ref[*lead, D]``, or of ``ref[*lead, D, column]``."""
    return _load(ref.at[_channel_index(p, lay, lead, column)], p.dmask)


def store_channels(ref, p: Program, lay: Layout, value, lead=(), column: int | None = None):
    plgpu.store(ref.at[_channel_index(p, lay, lead, column)], value.astype(ref.dtype), mask=p.dmask)


def discretise(delta_raw, bias, delta_softplus: bool, mask, lay: Layout):
    """(delta after bias and softplus, zero where masked; delta before softplus) for a tile."""
    pre = delta_raw if bias is None else delta_raw + per_channel(bias, lay)
    delta = softplus(lay, pre) if delta_softplus else pre
    return jnp.where(mask, delta, 0.0), pre


def tile_mask(p: Program, lay: Layout, t0, shift: int = 0):
    _, valid = _rows(lay, t0, shift)
    return per_time(valid, lay) & per_channel(p.dmask, lay)


def step_mask(lay: Layout, i: int):
    """True at time step i of a tile, broadcastable over its channels."""
    return per_time(jnp.arange(lay.chunk) == i, lay)


def at_step(tile, lay: Layout, i: int):
    """Time step i of a tile as (block_d,): a masked sum, since registers cannot be indexed."""
    return sum_time(jnp.where(step_mask(lay, i), tile, 0.0), lay)


def silu_grad(z):
    sig = jax.nn.sigmoid(z)
    return sig * (1.0 + z * (1.0 - sig))
