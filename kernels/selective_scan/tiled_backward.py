"""Tiled backward kernel: tiles in reverse, each one's states and adjoints by two parallel recurrences.

For state index n, decay a_t = exp(delta_t A_n), drive x_t = delta_t u_t B_t, output gradient g_t (after the
gate) and e_t = g_t C_t, per tile of ``chunk`` steps:
    states before each step  h_{t-1}: forward recurrence over the inputs shifted by one step (loaded from
                             t0 - 1), its first row replaced by the tile's entering state (the forward's
                             checkpoint); then h_t = a_t h_{t-1} + x_t elementwise
    state adjoints           G_t = e_t + a_{t+1} G_{t+1}: reverse recurrence over decays loaded from t0 + 1,
                             plus the adjoint entering from the next tile times the reverse decay product
    gradients                du = delta sum_n G B + D g;  ddelta = u sum_n G B + sum_n G h_{t-1} a A_n;
                             dA_n += sum_t G h_{t-1} a delta;  dB_n = sum_d G delta u;  dC_n = sum_d g h
Shifted tiles are re-reads of what the neighbouring tile loads (cache hits), traded for register shifts that
Triton cannot do. dB and dC come out per channel block, dA, dD and d delta_bias per batch row; the caller
reduces them (deterministic, no atomics).
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


def _kernel(*refs, names, out_names, lay: Layout, delta_softplus: bool):
    r = dict(zip(names, refs))
    o = dict(zip(out_names, refs[len(names):]))
    p = common.program(lay)
    N, axis = lay.d_state, tiles.time_axis(lay)
    A = [tiles.load_channels(r["A"], p, lay, column=n) for n in range(N)]
    skip = tiles.load_channels(r["D"], p, lay) if "D" in r else None
    bias = tiles.load_channels(r["delta_bias"], p, lay) if "delta_bias" in r else None

    def delta_tile(t0, shift):
        raw = tiles.load_tile(r["delta"], p, lay, t0, shift)
        return tiles.discretise(raw, bias, delta_softplus, tiles.tile_mask(p, lay, t0, shift), lay)

    def chunk(k, carry):
        adjoints, dA, dskip, dbias = carry
        c = lay.n_chunks - 1 - k
        t0 = c * lay.chunk
        u, (delta, delta_pre) = tiles.load_tile(r["u"], p, lay, t0), delta_tile(t0, 0)
        u_prev, (delta_prev, _) = tiles.load_tile(r["u"], p, lay, t0, -1), delta_tile(t0, -1)
        delta_next, _ = delta_tile(t0, 1)
        dy = tiles.load_tile(r["dy"], p, lay, t0)
        if "z" in r:
            z = tiles.load_tile(r["z"], p, lay, t0)
            g = dy * z * jax.nn.sigmoid(z)
        else:
            g = dy
        y = u * tiles.per_channel(skip, lay) if skip is not None else jnp.zeros_like(u)
        du = g * tiles.per_channel(skip, lay) if skip is not None else jnp.zeros_like(u)
        ddelta = jnp.zeros_like(u)
        new_adjoints, new_dA = [], []
        for n in range(N):
            B = tiles.per_time(tiles.load_state_column(r["B"], p, lay, t0, n), lay)
            C = tiles.per_time(tiles.load_state_column(r["C"], p, lay, t0, n), lay)
            B_prev = tiles.per_time(tiles.load_state_column(r["B"], p, lay, t0, n, shift=-1), lay)
            A_n = tiles.per_channel(A[n], lay)
            entering = tiles.load_channels(r["states"], p, lay, lead=(p.b, jnp.maximum(c - 1, 0)), column=n)
            entering = jnp.where(c > 0, entering, 0.0)
            drive_prev = jnp.where(tiles.step_mask(lay, 0), tiles.per_channel(entering, lay),
                                   delta_prev * u_prev * B_prev)
            _, h_prev = linear_recurrence(jnp.exp(delta_prev * A_n), drive_prev, axis=axis)
            a = jnp.exp(delta * A_n)
            h = a * h_prev + delta * u * B
            y = y + h * C
            decay, G = linear_recurrence(jnp.exp(delta_next * A_n), g * C, axis=axis, reverse=True)
            G = G + decay * tiles.per_channel(adjoints[n], lay)
            GB = G * B
            du = du + GB * delta
            Gha = G * h_prev * a
            ddelta = ddelta + GB * u + Gha * A_n
            new_dA.append(dA[n] + tiles.sum_time(Gha * delta, lay))
            tiles.store_block_column(o["dB"], p, lay, t0, n, tiles.sum_channels(G * delta * u, lay))
            tiles.store_block_column(o["dC"], p, lay, t0, n, tiles.sum_channels(g * h, lay))
            new_adjoints.append(tiles.at_step(G, lay, 0))
        if "z" in r:
            tiles.store_tile(o["dz"], p, lay, t0, dy * y * tiles.silu_grad(z))
        if delta_softplus:
            ddelta = ddelta * jax.nn.sigmoid(delta_pre)
        ddelta = jnp.where(tiles.tile_mask(p, lay, t0), ddelta, 0.0)
        tiles.store_tile(o["du"], p, lay, t0, du)
        tiles.store_tile(o["ddelta"], p, lay, t0, ddelta)
        dskip = dskip + tiles.sum_time(g * u, lay)
        dbias = dbias + tiles.sum_time(ddelta, lay)
        return tuple(new_adjoints), tuple(new_dA), dskip, dbias

    vec = jnp.zeros((lay.block_d,), F32)
    if "dlast" in r:
        adjoints = tuple(tiles.load_channels(r["dlast"], p, lay, lead=(p.b,), column=n) for n in range(N))
    else:
        adjoints = (vec,) * N
    _, dA, dskip, dbias = jax.lax.fori_loop(0, lay.n_chunks, chunk, (adjoints, (vec,) * N, vec, vec))
    for n in range(N):
        tiles.store_channels(o["dA"], p, lay, dA[n], lead=(p.b,), column=n)
    if "dD" in o:
        tiles.store_channels(o["dD"], p, lay, dskip, lead=(p.b,))
    if "dbias" in o:
        tiles.store_channels(o["dbias"], p, lay, dbias, lead=(p.b,))


def backward(inputs: dict, lay: Layout, *, delta_softplus: bool, interpret: bool, num_warps: int = 4):
    """Run the tiled backward kernel; same inputs and outputs as ``backward.backward`` (the serial kernel),
    with ``states`` the tiled forward's per-tile checkpoints."""
    u = inputs["u"]
    length = tiles.padded_length(lay)
    bld = (lay.batch, length, lay.dim)
    partial_bc = jax.ShapeDtypeStruct((lay.batch, length, lay.n_blocks, lay.d_state), F32)
    shapes = {"du": jax.ShapeDtypeStruct(bld, u.dtype),
              "ddelta": jax.ShapeDtypeStruct(bld, inputs["delta"].dtype),
              "dA": jax.ShapeDtypeStruct((lay.batch, lay.dim, lay.d_state), F32),
              "dB": partial_bc, "dC": partial_bc}
    if "z" in inputs:
        shapes["dz"] = jax.ShapeDtypeStruct(bld, inputs["z"].dtype)
    if "D" in inputs:
        shapes["dD"] = jax.ShapeDtypeStruct((lay.batch, lay.dim), F32)
    if "delta_bias" in inputs:
        shapes["dbias"] = jax.ShapeDtypeStruct((lay.batch, lay.dim), F32)
    names, out_names = tuple(inputs), tuple(shapes)
    kernel = functools.partial(_kernel, names=names, out_names=out_names, lay=lay,
                               delta_softplus=delta_softplus)
    outs = pl.pallas_call(
        kernel,
        out_shape=list(shapes.values()),
        grid=lay.grid,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps),
        interpret=interpret,
        name="selective_scan_tiled_bwd",
    )(*inputs.values())
    grads = dict(zip(out_names, outs))
    if length != lay.length:
        grads = {k: v[:, :lay.length] if v.ndim >= 3 and k != "dA" else v for k, v in grads.items()}
    return grads
