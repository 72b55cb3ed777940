"""Segment summaries for the ``split`` design: what one segment does to a state or a state adjoint passing
through it, computed from zero by one program per (batch row, channel block, segment).

A segment maps the state entering it, x, to a x + s, where a = exp(A sum_t delta_t) (the product of its step
decays) and s is the state it reaches from zero; the state adjoint leaving it backwards, h, likewise goes to
a h + r, where r is the adjoint it gathers from zero (h <- a_t (h + g_t C_t), walking the steps in reverse).
Both kernels write (s or r, sum_t delta_t); ``split`` chains the segments with these affine maps.
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

# The segment-state kernel loads each chunk's rows two chunks ahead (``Layout.prefetch_depth``): one chunk ahead, ncu
# put 15 % of the fp32 vmamba-64x64 states kernel's stall samples on the first use of delta; two ahead, interleaved on
# one H200, its forward was 4.7 % faster and mamba-768, long and vim-s within 0.3 % (NOTES.md, "Session 36").
STATE_DEPTH = 2


def _state_kernel(*refs, names, lay: Layout, delta_softplus: bool):
    """s: the segment's recurrence from a zero state."""
    r = dict(zip(names, refs))
    p = common.program(lay, r.get("order"))
    rates = common.load_rates(r["A"], p, lay)
    bias = common.load_channels(r["delta_bias"], p, lay) if "delta_bias" in r else None

    def load(here):
        return common.load_raw_step(r, p, lay, here)

    def chunk(c, heres, carry, loaded):
        x, dsum = carry
        for i, here in enumerate(heres):
            step = common.finish_step(lay, p, here, loaded[i] if loaded else load(here), bias, delta_softplus)
            x, dsum = common.advance(lay, x, step, rates, lay.poly_states), dsum + step.delta
        return x, dsum

    init = (jnp.zeros((lay.block_d, lay.state_pad), F32), jnp.zeros((lay.block_d,), F32))
    _store(refs[len(names):], p, lay, *common.walk(p, lay, chunk, init, load=load))


def _adjoint_kernel(*refs, names, lay: Layout, delta_softplus: bool):
    """r: the segment's state adjoint, walking its steps in reverse from a zero adjoint."""
    r = dict(zip(names, refs))
    p = common.program(lay, r.get("order"))
    rates = common.load_rates(r["A"], p, lay)
    bias = common.load_channels(r["delta_bias"], p, lay) if "delta_bias" in r else None

    def load(here):
        """A step's delta, output gradient, z (None without a gate) and C row as loaded; the step discretises and
        gates them where it runs (``common.RawStep`` says why)."""
        z = common.load_row(r["z"], p, lay, here) if "z" in r else None
        return (common.load_row(r["delta"], p, lay, here), common.load_dy_row(r["dy"], p, lay, here), z,
                common.load_group_row(r["C"], p, lay, here))

    def chunk(c, heres, carry, loaded):
        h, dsum = carry
        for i in reversed(range(len(heres))):
            here = heres[i]
            delta, g, z, C = loaded[i] if loaded else load(here)
            delta, _, _ = common.finish_delta(lay, p, here, delta, bias, delta_softplus)
            if z is not None:
                g = g * z * common.sigmoid(lay, z)
            h = common.decay(lay, delta, rates) * common.fma(lay, g[:, None], C[None, :], h)
            dsum = dsum + delta
        return h, dsum

    init = (jnp.zeros((lay.block_d, lay.state_pad), F32), jnp.zeros((lay.block_d,), F32))
    _store(refs[len(names):], p, lay, *common.walk(p, lay, chunk, init, reverse=True, load=load))


def _store(outs, p, lay: Layout, total, dsum):
    """This program's summary into (batch, n_segments, D, N) and its sum of delta into (batch, n_segments, D)."""
    total_ref, dsum_ref = outs
    common.store_matrix(total_ref, p, lay, total, index=(p.b, p.seg))
    common.store_channels(dsum_ref, p, lay, dsum, index=(p.b, p.seg))


def _summarise(kernel, inputs: dict, lay: Layout, keys, *, delta_softplus: bool, interpret: bool, num_warps: int,
               name: str):
    """Launch a summary kernel on the grid of a segmented layout, passing it only the inputs in ``keys``."""
    inputs = {k: inputs[k] for k in keys if k in inputs}
    names = tuple(inputs)
    shapes = [jax.ShapeDtypeStruct((lay.batch, lay.n_segments, lay.dim, lay.d_state), F32),
              jax.ShapeDtypeStruct((lay.batch, lay.n_segments, lay.dim), F32)]
    return pl.pallas_call(
        functools.partial(kernel, names=names, lay=lay, delta_softplus=delta_softplus),
        out_shape=shapes,
        grid=lay.grid,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps),
        interpret=interpret,
        name=name,
    )(*inputs.values())


def states(inputs: dict, lay: Layout, **kw):
    """(s (batch, n_segments, D, N), sum of delta (batch, n_segments, D)), float32, for a segmented layout."""
    lay = dataclasses.replace(lay, prefetch_depth=STATE_DEPTH)
    return _summarise(_state_kernel, inputs, lay, ("u", "delta", "A", "B", "delta_bias", "order"),
                      name="selective_scan_split_states", **kw)


def adjoints(inputs: dict, lay: Layout, **kw):
    """(r (batch, n_segments, D, N), sum of delta (batch, n_segments, D)), float32; ``inputs`` need dy."""
    return _summarise(_adjoint_kernel, inputs, lay, ("delta", "A", "C", "z", "delta_bias", "dy", "order"),
                      name="selective_scan_split_adjoints", **kw)
