"""Backward kernel: walk the chunks in reverse, recompute each chunk's states from its checkpoint, and
carry the state adjoint h (block_d, N) on chip.

For step t with decay a_t = exp(delta_t A), state x_t and output gradient g_t (after the gate):
    h_t      = g_t C_t + a_{t+1} h_{t+1}                (h past the end = d last_state)
    dC_t     = sum_d g_t x_t            dB_t = sum_d h_t delta_t u_t
    du_t     = delta_t sum_n h_t B_t + D g_t
    ddelta_t = u_t sum_n h_t B_t + sum_n h_t x_{t-1} a_t A
    dA      += h_t x_{t-1} a_t delta_t
A chunk's states are recomputed into registers (the chunk loop is unrolled), so the backward reads the
inputs, the checkpoints and dy once and never materialises (batch, L, D, N). dB and dC come out as one
partial sum per channel block, dA, dD and d delta_bias as one partial per batch row; the caller reduces
them (deterministic, no atomics). With a segmented layout (the ``split`` design) each program walks one
segment, starting from the state adjoint ``h_in`` (batch, n_segments, D, N) entering it from the later
segments, and writes its dA, dD, d delta_bias partials at row b * n_segments + segment.
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


def _kernel(*refs, names, out_names, lay: Layout, delta_softplus: bool):
    r = dict(zip(names, refs))
    o = dict(zip(out_names, refs[len(names):]))
    p = common.program(lay, r.get("order"))
    rates = common.load_rates(r["A"], p, lay)
    skip = common.load_channels(r["D"], p, lay) if "D" in r else None
    bias = common.load_channels(r["delta_bias"], p, lay) if "delta_bias" in r else None
    tile = jnp.zeros((lay.block_d, lay.state_pad), F32)
    vec = jnp.zeros((lay.block_d,), F32)

    def load(here):
        """A step's inputs: (u, delta, B), its C row, dy, and z (None without a gate)."""
        z = common.load_row(r["z"], p, lay, here) if "z" in r else None
        return (common.load_step(r, p, lay, here, bias, delta_softplus), common.load_group_row(r["C"], p, lay, here),
                common.load_dy_row(r["dy"], p, lay, here), z)

    def chunk(c, heres, carry, _):
        h, dA, dskip, dbias = carry
        x = common.load_matrix(r["states"], p, lay, index=(p.b, jnp.maximum(c - 1, 0)))
        x = jnp.where(c > 0, x, 0.0)
        # Hoisted: every input of the chunk loaded once, before the first store, and held through both walks.
        # Otherwise (fewer registers) the reverse walk loads its step again, between the previous step's stores:
        # with ``prefetch_rows`` one step ahead (the next step's loads issued before this step's work and stores,
        # two steps' inputs held, not the chunk's), else in the step itself, so that each step waits out its loads.
        hoisted = [load(here) for here in heres] if lay.hoist_loads else None
        states = [x]  # states[i] = state before step i of the chunk; states[i + 1] = after it
        for i, here in enumerate(heres):
            step = hoisted[i][0] if hoisted else common.load_step(r, p, lay, here, bias, delta_softplus)
            states.append(common.advance(lay, states[-1], step, rates))
        ahead = lay.prefetch_rows and not hoisted
        upcoming = load(heres[-1]) if ahead else None
        for i in reversed(range(lay.chunk)):
            here = heres[i]
            if hoisted:
                step, C, g, z = hoisted[i]
            elif ahead:
                (step, C, g, z), upcoming = upcoming, (load(heres[i - 1]) if i else None)
            else:
                step, C, g, z = load(here)
            if z is not None:
                y = jnp.sum(states[i + 1] * C[None, :], axis=1)
                if skip is not None:
                    y = y + skip * step.u
                sig = common.sigmoid(lay, z)
                common.store_row(o["dz"], p, lay, here, g * y * sig * (1.0 + z * (1.0 - sig)))
                g = g * z * sig
            common.store_block_row(o["dC"], p, lay, here, jnp.sum(g[:, None] * states[i + 1], axis=0))
            h = common.fma(lay, g[:, None], C[None, :], h)
            h_decayed = common.decay(lay, step.delta, rates) * h  # a_t h_t: both hx and the next step's h
            hx = h_decayed * states[i]
            dA = common.fma(lay, hx, step.delta[:, None], dA)
            hB = jnp.sum(h * step.B[None, :], axis=1)
            du = step.delta * hB
            if skip is not None:
                du = common.fma(lay, skip, g, du)
                dskip = common.fma(lay, g, step.u, dskip)
            common.store_row(o["du"], p, lay, here, du)
            ddelta = step.u * hB + jnp.sum(hx * rates, axis=1) / common.LOG2E  # sum_n h x a A
            if delta_softplus:
                ddelta = ddelta * common.sigmoid(lay, step.delta_pre)
            if step.mask is not None:
                ddelta = jnp.where(step.mask, ddelta, 0.0)
            dbias = dbias + ddelta
            common.store_row(o["ddelta"], p, lay, here, ddelta)
            common.store_block_row(o["dB"], p, lay, here,
                                   jnp.sum(h * (step.delta * step.u)[:, None], axis=0))
            h = h_decayed
        return h, dA, dskip, dbias

    if "h_in" in r:
        h0 = common.load_matrix(r["h_in"], p, lay, index=(p.b, p.seg))
    else:
        h0 = common.load_matrix(r["dlast"], p, lay, index=(p.b,)) if "dlast" in r else tile
    _, dA, dskip, dbias = common.walk(p, lay, chunk, (h0, tile, vec, vec), reverse=True)
    row = p.b * lay.n_segments + p.seg
    common.store_matrix(o["dA"], p, lay, dA, index=(row,))
    if "dD" in o:
        common.store_channels(o["dD"], p, lay, dskip, index=(row,))
    if "dbias" in o:
        common.store_channels(o["dbias"], p, lay, dbias, index=(row,))


def backward(inputs: dict, lay: Layout, *, delta_softplus: bool, interpret: bool, num_warps: int = 8):
    """Run the backward kernel.

    ``inputs``: u, delta, A, B, C, [D], [z], [delta_bias], states (batch, n_chunks, D, N) from the forward,
    dy (batch, L, D), [dlast (batch, D, N)] or, with a segmented layout, h_in (batch, n_segments, D, N).
    Returns a dict of raw gradients: du, ddelta, [dz] shaped like their inputs; dA (rows, D, N), [dD],
    [dbias] (rows, D) with rows = batch * n_segments, and dB, dC (batch, L, n_blocks, N), float32 partial
    sums for the caller to reduce.
    """
    u = inputs["u"]
    bld = (lay.batch, lay.length, lay.dim)
    rows = lay.batch * lay.n_segments
    partial_bc = jax.ShapeDtypeStruct((lay.batch, lay.length, lay.n_blocks, lay.d_state), F32)
    shapes = {"du": jax.ShapeDtypeStruct(bld, u.dtype),
              "ddelta": jax.ShapeDtypeStruct(bld, inputs["delta"].dtype),
              "dA": jax.ShapeDtypeStruct((rows, lay.dim, lay.d_state), F32),
              "dB": partial_bc, "dC": partial_bc}
    if "z" in inputs:
        shapes["dz"] = jax.ShapeDtypeStruct(bld, inputs["z"].dtype)
    if "D" in inputs:
        shapes["dD"] = jax.ShapeDtypeStruct((rows, lay.dim), F32)
    if "delta_bias" in inputs:
        shapes["dbias"] = jax.ShapeDtypeStruct((rows, lay.dim), F32)
    names, out_names = tuple(inputs), tuple(shapes)
    lay = dataclasses.replace(lay, pair_chunks=False)  # its walk loads a step ahead inside the chunk, one chunk a loop
    kernel = functools.partial(_kernel, names=names, out_names=out_names, lay=lay,
                               delta_softplus=delta_softplus)
    outs = pl.pallas_call(
        kernel,
        out_shape=list(shapes.values()),
        grid=lay.grid,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps),
        interpret=interpret,
        name="selective_scan_bwd",
    )(*inputs.values())
    return dict(zip(out_names, outs))
