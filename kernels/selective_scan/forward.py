"""Forward kernel: y = scan(u, delta, A, B, C) * gate, the state held on chip for the whole sequence.

Grid (batch, channel blocks). Each program walks L in chunks of ``chunk`` steps with ``lax.fori_loop``;
the steps of a chunk are unrolled so their loads are independent of the recurrence and can be issued
early. The (batch, L, D, N) state is never written: depending on ``save`` the kernel stores nothing, the
last state, or the state at the end of every chunk (the checkpoints the backward kernel restarts from).
With a segmented layout (the ``split`` design) each program walks one segment, starting from the state
``h_in`` (batch, n_segments, D, N) given for it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels.selective_scan import common
from kernels.selective_scan.common import F32, Layout

SAVE_MODES = ("none", "last", "chunks")


def _kernel(*refs, names, lay: Layout, delta_softplus: bool, save: str):
    r = dict(zip(names, refs))
    y_ref = refs[len(names)]
    p = common.program(lay, r.get("order"))
    rates = common.load_rates(r["A"], p, lay)
    skip = common.load_channels(r["D"], p, lay) if "D" in r else None
    bias = common.load_channels(r["delta_bias"], p, lay) if "delta_bias" in r else None

    def load(here):
        """A step's inputs as loaded: (u, delta, B), its C row, and z (None without a gate)."""
        z = common.load_row(r["z"], p, lay, here) if "z" in r else None
        return common.load_raw_step(r, p, lay, here), common.load_group_row(r["C"], p, lay, here), z

    def chunk(c, heres, x, loaded):
        hoisted = loaded or ([load(here) for here in heres] if lay.hoist_loads else None)
        for i, here in enumerate(heres):
            raw, C, z = hoisted[i] if hoisted else load(here)
            step = common.finish_step(lay, p, here, raw, bias, delta_softplus)
            x = common.advance(lay, x, step, rates, lay.poly_walk)
            y = jnp.sum(x * C[None, :], axis=1)
            if skip is not None:
                y = common.fma(lay, skip, step.u, y)
            if z is not None:
                y = y * z * common.sigmoid(lay, z)
            common.store_row(y_ref, p, lay, here, y)
        if save == "chunks":
            common.store_matrix(refs[-1], p, lay, x, index=(p.b, c))
        return x

    if "h_in" in r:
        x = common.load_matrix(r["h_in"], p, lay, index=(p.b, p.seg))
    else:
        x = jnp.zeros((lay.block_d, lay.state_pad), F32)
    x = common.walk(p, lay, chunk, x, load=load)
    if save == "last":
        common.store_matrix(refs[-1], p, lay, x, index=(p.b, 0))


def forward(inputs: dict, lay: Layout, *, delta_softplus: bool, save: str, interpret: bool,
            num_warps: int = 4):
    """Run the forward kernel on ``inputs`` (name -> array; D, z, delta_bias may be absent; h_in only with a
    segmented layout).

    Returns y (batch, L, D) in u's dtype, and for save != "none" also the saved states
    (batch, 1 or n_chunks, D, N) float32 ("last" only without segments: segments end in other programs).
    """
    if save not in SAVE_MODES or (save == "last" and lay.segment):
        raise ValueError(f"save={save!r}, expected one of {SAVE_MODES} (not last with segments)")
    u = inputs["u"]
    out_shape = [jax.ShapeDtypeStruct((lay.batch, lay.length, lay.dim), u.dtype)]
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
        name="selective_scan_fwd",
    )(*inputs.values())
    return outs[0] if save == "none" else tuple(outs)
