"""``selective_scan_pallas``: the forward and backward kernels joined by ``jax.custom_vjp``.

Designs (NOTES.md has their measurements, and those of the parallel-in-time tile designs, measured slower and removed):
``serial`` walks the steps one by one inside each program; ``split`` cuts the sequence into ``chunk``-step segments
walked by separate programs (``split.py``: segment summaries, a short scan over them, then the serial kernels per
segment; a sequence of one segment runs the serial kernels alone). ``auto`` is ``split`` with one warp per program, 16
channels a backward program and 32 a forward one (16 when that would leave the forward's grid short:
``split.WIDE_FORWARD_GRID``, ``WIDE_INFERENCE_GRID`` without a gradient), 128-step segments (one segment when the grid
is already full), a checkpoint every 2 steps inside segments (every 4 in a single one), the chain over segments as one
kernel, the forward's loads hoisted and every load issued a chunk ahead, the gate in the forward walk when no gradient
is taken and after the kernels when one is: the fastest Pallas design measured for forward+backward, and then for the
forward alone, on the benchmark shapes (NOTES.md). Under differentiation the forward stores the state every ``chunk``
steps (batch, n_chunks, D, N) as the residual; the backward restarts each chunk from it. Without differentiation nothing
but y (and the last state, when asked) is written. Under a context mesh each device scans its own batch rows
(``per_device``). delta reaches the backward kernel discretised, softplus(delta + bias) in float32 computed once in XLA,
and the forward kernels too for float32 inputs when a gradient is taken; otherwise the forward kernels discretise it
themselves (``DELTA_IN_KERNEL_BY_ITEMSIZE``), as measured. Compiled for an NVIDIA GPU, the kernels write their
exponentials and multiply-adds as single PTX instructions (``Layout.ptx``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels.selective_scan import backward, forward, split
from kernels.selective_scan.common import POLY_PACK, check_power_of_two, make_layout
from kernels.selective_scan.per_device import per_device
from ssm_jax.ssm.selective_scan import discretize_delta, finish_output, group_sum

# design -> (forward, backward, default chunk, default (forward, backward) block_d caps, forward warps, backward
# warps)
DESIGNS = {
    "serial": (forward.forward, backward.backward, 16, (32, 32), 4, 8),
    "split": (split.forward, split.backward, split.SEGMENT, (split.WIDE_FORWARD, 16), 1, 1),  # chunk: segment
}


def _inputs(u, delta, A, B, C, D, z, delta_bias, order) -> dict:
    """Name -> array, dropping absent optionals; A in float32 (it enters every exponent)."""
    named = dict(u=u, delta=delta, A=A.astype(jnp.float32), B=B, C=C, D=D, z=z, delta_bias=delta_bias, order=order)
    return {k: v for k, v in named.items() if v is not None}


def _reduced(grads: dict, key: str, like):
    """Sum a per-batch-row partial gradient over batch, in the dtype of its input (None when absent)."""
    return None if like is None else grads[key].sum(0).astype(like.dtype)


AUTO_DESIGN = "split"
# ``hoist_loads`` left as None, by kernel: hoisted in both, the forward was 7-18 % faster on the four benchmark shapes
# timed cleanly and forward+backward 3-38 % slower on all four, the backward's registers 168 -> 254 on vim-s (one
# H200, NOTES.md, "Session 10").
HOIST_BY_DEFAULT = {"inference": True, "forward": True, "backward": False}
# Positions a chunk ahead (serial and split, with an ``order``): forward 13-25 % and forward+backward 6-9 % faster on
# MemoryMamba's three in-place stage scans and ad-32, within 2 % on ad-64 (fp32; bf16 forward+backward 1-6 %
# faster; one H200, NOTES.md, "Session 11").
PREFETCH_ORDER = True
# Every load a chunk ahead (``prefetch_rows`` left as None): with the gate outside, forward+backward 7-28 % faster
# than session 11's defaults on all five generic shapes in fp32 and bf16 (ours / mamba_ssm in the same call, e.g.
# vmamba-64x64 1.48 -> 1.07, 8-dir 0.47 -> 0.38), and 7-15 % on the in-place ad-64, ad-32 and mm-tiny-28 scans
# (one H200, NOTES.md, "Session 12").
PREFETCH_ROWS = True
# The gate y * silu(z) (``gate_in_kernel`` left as None) in the forward walk when no gradient is taken, and in XLA
# after the kernels when differentiated. Outside, the backward kernel loses z's loads, the sigmoid, the recomputed y
# and the dz store (and its register spill on vmamba-64x64): forward+backward 2-24 % faster on the five generic
# shapes, fp32 and bf16, for up to 6.5 % more peak memory (NOTES.md, "Session 12"). In the walk, the forward alone
# drops XLA's pass over y and z: interleaved, 1.7-10 % faster in bf16 and 6-15 % in fp32 on all five (one H200,
# NOTES.md, "Session 26").
GATE_IN_KERNEL = "forward"
# The split design's chain over segments as one kernel (``chain.py``; ``chain_in_kernel`` left as None), not XLA's
# associative scan over segments (five small fusions, 23 us of a 232 us forward on vmamba-64x64, ncu): interleaved on
# vmamba-64x64, mamba-768, long and vim-s, forward 3-6 % and forward+backward 2-3 % faster, fp32 and bf16 (one H200,
# NOTES.md, "Session 15").
CHAIN_IN_KERNEL = True
# Two chunks an iteration of the forward and summary kernels' walks (``Layout.pair_chunks``; ``pair_chunks`` left as
# None): no register copies of the rows loaded ahead at the loop's back edge, 6-11 % fewer loop instructions a chunk
# (``kernel_resources.py``, NOTES.md "Session 31"). Interleaved on vmamba-64x64, mamba-768, vim-s and 8-dir, the
# forward 1-6 % faster in fp32 and 2-5 % in bf16, forward+backward -3 % to +1 % (one H200, NOTES.md "Session 32").
PAIR_CHUNKS = True
# Where delta is discretised when ``delta_in_kernel`` is left as None, by the bytes of an element of u. 16-bit
# inputs: in the forward kernels ("forward"), which read delta as given, where the XLA pass read it in 16 bits and
# wrote it in 32 for both forward kernels to read; interleaved in bf16 on vmamba-64x64, mamba-768, long and vim-s,
# forward 6-9 % faster and forward+backward within 0.5 % (one H200, NOTES.md, "Session 18"). float32: in the
# forward kernels when no gradient is taken ("inference"), outside when one is: with today's kernels "forward" made
# the forward alone 2-8 % faster on the same four shapes and forward+backward 1-3 % slower (two calls on a lent H200;
# "inference" took both gains in the second; NOTES.md, "Session 33"), so each path takes its faster choice.
DELTA_IN_KERNEL_BY_ITEMSIZE = {2: "forward", 4: "inference"}
# (segment-state kernel, forward walk) decays of every ``common.POLY_PACK`` from the FMA-pipe polynomial when
# ``poly_exp`` is left as None, by the bytes of an element of u; 0 where a thread's decays do not come in whole
# packs (``_with_poly_exp``). Interleaved against none on one H200 (NOTES.md, "Session 38"): float32 (1, 1) took the
# forward 2.3-2.9 % faster on mamba-768, long and mm-tiny-56, within 0.9 % on vim-s, 8-dir and vmamba-64x64; bf16
# (1, 0) -1.3 % to +0.2 %, where (1, 1) was 0.5-1.6 % slower on four shapes. Forward+backward within 1.6 % either way.
POLY_EXP_BY_ITEMSIZE = {2: (1, 0), 4: (1, 1)}
# Which passes discretise delta themselves for each ``delta_in_kernel``: "inference" is the forward taken without a
# gradient (``_scan``), "forward" and "backward" the two halves of a differentiated scan (``_scan_fwd``,
# ``_scan_bwd``).
DELTA_INSIDE = {True: frozenset({"inference", "forward", "backward"}), False: frozenset(),
                "forward": frozenset({"inference", "forward"}), "inference": frozenset({"inference"})}


class Tuning(NamedTuple):
    """How the kernels run, hashable (a static argument of the custom VJP); None takes the design's default."""

    design: str = "auto"
    block_d: tuple[int | None, int | None] = (None, None)  # (forward, backward)
    chunk: int | None = None
    num_warps: tuple[int, int] | None = None
    unroll: int | None = None
    hoist_loads: bool | None = None
    # False: softplus(delta + bias) once in XLA, in float32, not in every kernel pass. libdevice's log1pf and expf
    # were most of the summary kernels' instructions (1010 -> 357 a 4-step chunk, forward 1101 -> 639, backward
    # 2563 -> 1660; ``benchmarks/kernel_resources.py``, NOTES.md), for a few elementwise passes over delta. In the
    # kernels softplus now takes ``lg2.approx`` (``common.softplus``), which costs 7-16 % more forward instructions
    # (bf16 vmamba-64x64, NOTES.md "Session 16"). "forward": in the forward kernels only (no XLA pass before them);
    # the backward, whose kernel paid 15-41 % more, keeps the pass. "inference": in the forward kernels when no
    # gradient is taken, outside when one is (``DELTA_INSIDE``). ``selective_scan_pallas`` resolves its None by
    # dtype (``DELTA_IN_KERNEL_BY_ITEMSIZE``).
    delta_in_kernel: bool | str = False
    # With an ``order``: each chunk's positions loaded one chunk ahead (``common.walk``); None: ``PREFETCH_ORDER``.
    prefetch_order: bool | None = None
    # Every load of a chunk issued one chunk ahead (``common.walk``); None: ``PREFETCH_ROWS``.
    prefetch_rows: bool | None = None
    # split: the chain over segments as one kernel (``chain.py``); None: ``CHAIN_IN_KERNEL``.
    chain_in_kernel: bool | None = None
    # Two chunks an iteration of the walks that load rows ahead (``Layout.pair_chunks``); None: ``PAIR_CHUNKS``.
    pair_chunks: bool | None = None
    # (segment-state kernel, forward walk): decays of every ``common.POLY_PACK`` from the FMA-pipe polynomial
    # (``Layout.poly_states``, ``poly_walk``); None: ``POLY_EXP_BY_ITEMSIZE``.
    poly_exp: tuple[int, int] | None = None


def default_delta_in_kernel(dtype) -> bool | str:
    """Where delta is discretised for inputs of this dtype when the caller does not say: the measured choice
    ``DELTA_IN_KERNEL_BY_ITEMSIZE``, outside the kernels for any other size."""
    return DELTA_IN_KERNEL_BY_ITEMSIZE.get(jnp.dtype(dtype).itemsize, False)


def _ptx(interpret: bool) -> bool:
    """Whether the kernels may use inline PTX (``Layout.ptx``): compiled, not interpreted, and not for ROCm."""
    return not interpret and "rocm" not in jax.devices()[0].client.platform_version.lower()


def _design(tuning: Tuning, u, B, A, direction="forward", interpret=True, in_place=False):
    """(forward, backward, layout, forward warps, backward warps) of a design for these inputs; the layout is the
    ``direction`` kernel's ("inference", the forward when no gradient is taken, "forward" or "backward": the
    forward's and backward's differ in ``hoist_loads`` by default, and a forward's channels a program depend on
    whether it is differentiated, and without a gradient on the dtype and on whether the inputs are scanned
    ``in_place``), with inline PTX unless ``interpret`` (``_ptx``)."""
    design = AUTO_DESIGN if tuning.design == "auto" else tuning.design
    if design not in DESIGNS:
        raise ValueError(f"selective_scan_pallas: design={design!r}, expected auto or one of {sorted(DESIGNS)}")
    fwd, bwd, default_chunk, caps, fwd_warps, bwd_warps = DESIGNS[design]
    per_group = 1 << max(0, (u.shape[2] // B.shape[2] - 1).bit_length())
    fwd_block, bwd_block = (min(cap, per_group) if asked is None else asked
                            for asked, cap in zip(tuning.block_d, caps))
    # The backward's channel blocks fix the segments (``split.default_segment`` counts programs) and so the
    # checkpoints both directions share; the forward kernels then take their own block width.
    lay = make_layout(u, B, A.shape[1], bwd_block, default_chunk if tuning.chunk is None else tuning.chunk)
    if design == "split":
        if lay.chunk & (lay.chunk - 1):
            raise ValueError(f"selective_scan_pallas: chunk={lay.chunk} must be a power of two for the split design")
        if tuning.chunk is None:
            lay = dataclasses.replace(lay, chunk=split.default_segment(lay))
        lay = split.layout(lay, tuning.unroll)
    elif tuning.unroll is not None:
        raise ValueError(f"selective_scan_pallas: unroll is a setting of the split design, not of {design}")
    hoist = HOIST_BY_DEFAULT[direction] if tuning.hoist_loads is None else bool(tuning.hoist_loads)
    prefetch = PREFETCH_ORDER if tuning.prefetch_order is None else bool(tuning.prefetch_order)
    rows = PREFETCH_ROWS if tuning.prefetch_rows is None else bool(tuning.prefetch_rows)
    paired = PAIR_CHUNKS if tuning.pair_chunks is None else bool(tuning.pair_chunks)
    lay = dataclasses.replace(lay, hoist_loads=hoist, prefetch_order=prefetch, prefetch_rows=rows, pair_chunks=paired)
    if tuning.chain_in_kernel is not None and design != "split":
        raise ValueError(f"selective_scan_pallas: chain_in_kernel is a setting of the split design, not of {design}")
    if design == "split":
        chained = CHAIN_IN_KERNEL if tuning.chain_in_kernel is None else bool(tuning.chain_in_kernel)
        lay = dataclasses.replace(lay, chain_kernel=chained)
    if tuning.num_warps is not None:
        fwd_warps, bwd_warps = tuning.num_warps
    if direction != "backward":
        wide = dataclasses.replace(lay, block_d=check_power_of_two("block_d", fwd_block))
        threshold = split.WIDE_INFERENCE_GRID if direction == "inference" else split.WIDE_FORWARD_GRID
        if tuning.block_d[0] is not None or math.prod(wide.grid) >= threshold:
            lay = wide
        if (design == "split" and direction == "inference" and tuning.block_d[0] is None
                and split.widest_inference(lay, jnp.dtype(u.dtype).itemsize, in_place)):
            lay = dataclasses.replace(lay, block_d=split.WIDEST_INFERENCE)
        lay = _with_poly_exp(lay, tuning.poly_exp, u.dtype, fwd_warps, _ptx(interpret))
    return fwd, bwd, dataclasses.replace(lay, ptx=_ptx(interpret)), fwd_warps, bwd_warps


def _with_poly_exp(lay, poly_exp: tuple[int, int] | None, dtype, warps: int, ptx: bool):
    """The forward layout with ``poly_exp`` set. None: compiled (``ptx``), ``POLY_EXP_BY_ITEMSIZE`` where the inline
    assembly's groups of ``POLY_PACK`` decays divide each thread's, else none; interpreted, none. An explicit request
    the groups do not divide is refused; interpreted, it takes the polynomial for every decay of those kernels."""
    packs = lay.block_d * lay.state_pad % (32 * warps * POLY_PACK) == 0
    if poly_exp is None:
        poly_exp = POLY_EXP_BY_ITEMSIZE.get(jnp.dtype(dtype).itemsize, (0, 0)) if ptx and packs else (0, 0)
    elif ptx and any(poly_exp) and not packs:
        raise ValueError(f"selective_scan_pallas: poly_exp={poly_exp} needs each thread's decays in groups of "
                         f"{POLY_PACK}, but block_d={lay.block_d} x {lay.state_pad} states on {warps} warps gives "
                         f"{lay.block_d * lay.state_pad / (32 * warps):g} a thread")
    return dataclasses.replace(lay, poly_states=poly_exp[0], poly_walk=poly_exp[1])


REPLICATED = frozenset({"A", "D", "delta_bias", "order"})


def _design_for(inputs: dict, tuning: Tuning, direction: str, interpret: bool):
    """``_design`` for (per-device) kernel inputs, whose u may hold one group's channels for all of them
    (``Layout.shared_u``): the layout counts delta's channels, in u's dtype."""
    u, delta = inputs["u"], inputs["delta"]
    full_u = jax.ShapeDtypeStruct(delta.shape, u.dtype)
    *kernels, lay, fwd_warps, bwd_warps = _design(tuning, full_u, inputs["B"], inputs["A"], direction, interpret,
                                                  in_place="order" in inputs)
    shared_dy = "dy" in inputs and inputs["dy"].shape[2] != delta.shape[2]
    return (*kernels, dataclasses.replace(lay, shared_u=u.shape[2] != delta.shape[2], shared_dy=shared_dy), fwd_warps,
            bwd_warps)


def _forward(inputs: dict, tuning: Tuning, delta_softplus, save, interpret):
    """The design's forward kernel on (per-device) inputs: y, or (y, states) when ``save`` is not "none"; with
    ``save`` "chunks" (the backward's residual) in the differentiated forward's layout, else the inference one's."""
    direction = "forward" if save == "chunks" else "inference"
    forward, _, lay, warps, _ = _design_for(inputs, tuning, direction, interpret)
    return forward(inputs, lay, delta_softplus=delta_softplus, save=save, interpret=interpret, num_warps=warps)


def _backward(inputs: dict, tuning: Tuning, delta_softplus, interpret):
    """The design's backward kernel on (per-device) inputs: gradients per batch row, dB and dC per group."""
    _, backward, lay, _, warps = _design_for(inputs, tuning, "backward", interpret)
    return sum_blocks(backward(inputs, lay, delta_softplus=delta_softplus, interpret=interpret, num_warps=warps), lay)


def _u_grad(du, u):
    """du in u's shape and dtype: the kernels give one per channel, which a shared u sums over the groups."""
    return (group_sum(du, du.shape[2] // u.shape[2]) if du.shape != u.shape else du).astype(u.dtype)


def _summed_output(out, groups: int, sum_groups: bool):
    """y, or (y, last_state), with y's groups summed when ``sum_groups``."""
    if not sum_groups:
        return out
    return (group_sum(out[0], groups), out[1]) if isinstance(out, tuple) else group_sum(out, groups)


def _discretised_outside(inputs: dict, delta_softplus: bool, tuning: Tuning, direction: str) -> bool:
    """Whether delta reaches the ``direction`` ("inference", "forward" or "backward", ``DELTA_INSIDE``) kernels
    discretised: when there is a bias or a softplus to apply, unless ``delta_in_kernel`` puts it in them."""
    inside = direction in DELTA_INSIDE[tuning.delta_in_kernel]
    return not inside and (delta_softplus or "delta_bias" in inputs)


def _kernel_inputs(inputs: dict, delta_softplus: bool, tuning: Tuning, direction: str):
    """(what the ``direction`` kernels read, whether they apply softplus): discretised outside, delta arrives as
    softplus(delta + bias) in float32 and the kernels skip bias and softplus in every pass."""
    if not _discretised_outside(inputs, delta_softplus, tuning, direction):
        return inputs, delta_softplus
    kernel = {k: v for k, v in inputs.items() if k != "delta_bias"}
    kernel["delta"] = discretize_delta(inputs["delta"], inputs.get("delta_bias"), delta_softplus, jnp.float32)
    return kernel, False


def _outer_delta_grads(grads: dict, given: dict, discretised, delta_softplus: bool) -> dict:
    """ddelta (in delta's dtype) and d delta_bias (per batch row, as the kernels give it) through a discretisation
    done outside the kernels, from their ddelta with respect to the ``discretised`` delta. softplus' derivative
    is sigmoid(x) = 1 - exp(-softplus(x)), so x itself is not needed again."""
    d = grads["ddelta"] * -jnp.expm1(-discretised) if delta_softplus else grads["ddelta"]
    out = {**grads, "ddelta": d.astype(given["delta"].dtype)}
    if "delta_bias" in given:
        out["dbias"] = d.sum(axis=1)
    return out


def sum_blocks(grads: dict, lay) -> dict:
    """dB and dC from the kernels' per-channel-block partials: (batch, L, G * blocks_per_group, N) -> (batch, L,
    G, N)."""
    shape = (lay.batch, lay.length, lay.groups, lay.blocks_per_group, lay.d_state)
    return {**grads, **{key: grads[key].reshape(shape).sum(axis=3) for key in ("dB", "dC")}}


@functools.partial(jax.custom_vjp, nondiff_argnums=(9, 10, 11, 12, 13))
def _scan(u, delta, A, B, C, D, z, delta_bias, order, delta_softplus, return_last_state, interpret, tuning,
          sum_groups):
    """The kernels' y, or (y, last state); with ``sum_groups`` y's groups summed, and its gradient read by the
    backward kernel as it comes, one group wide (``Layout.shared_dy``), not broadcast to every group."""
    save = "last" if return_last_state else "none"
    inputs, softplus = _kernel_inputs(_inputs(u, delta, A, B, C, D, z, delta_bias, order), delta_softplus, tuning,
                                      "inference")
    out = per_device(functools.partial(_forward, tuning=tuning, delta_softplus=softplus, save=save,
                                       interpret=interpret), inputs, REPLICATED)
    if return_last_state:
        y, states = out
        out = y, states[:, 0]
    return _summed_output(out, B.shape[2], sum_groups)


def _keeps_discretised(given: dict, delta_softplus: bool, tuning: Tuning) -> bool:
    """Whether the forward's discretised delta is the backward's residual, in place of delta: when both halves of
    a differentiated scan discretise outside the kernels and delta is float32 (kept, it takes delta's bytes). The
    backward then skips recomputing it, an XLA pass over delta (MemoryMamba-tiny's train step spent 4.4 ms of 113 on
    the two passes; 224 px, batch 64, float32; lent H100, ``benchmarks/step_profile.py``, session 56)."""
    return (given["delta"].dtype == jnp.float32 and _discretised_outside(given, delta_softplus, tuning, "forward")
            and _discretised_outside(given, delta_softplus, tuning, "backward"))


def _scan_fwd(u, delta, A, B, C, D, z, delta_bias, order, delta_softplus, return_last_state, interpret, tuning,
              sum_groups):
    given = _inputs(u, delta, A, B, C, D, z, delta_bias, order)
    inputs, softplus = _kernel_inputs(given, delta_softplus, tuning, "forward")
    y, states = per_device(functools.partial(_forward, tuning=tuning, delta_softplus=softplus, save="chunks",
                                             interpret=interpret), inputs, REPLICATED)
    out = _summed_output((y, states[:, -1]) if return_last_state else y, B.shape[2], sum_groups)
    if _keeps_discretised(given, delta_softplus, tuning):
        delta = inputs["delta"]
    return out, (u, delta, A, B, C, D, z, delta_bias, order, states)


def _scan_bwd(delta_softplus, return_last_state, interpret, tuning, sum_groups, residuals, cotangent):
    u, delta, A, B, C, D, z, delta_bias, order, states = residuals
    given = _inputs(u, delta, A, B, C, D, z, delta_bias, order)
    if _keeps_discretised(given, delta_softplus, tuning):  # the residual is softplus(delta + bias) already
        inputs, softplus = {k: v for k, v in given.items() if k != "delta_bias"}, False
    else:
        inputs, softplus = _kernel_inputs(given, delta_softplus, tuning, "backward")
    inputs["states"] = states
    if return_last_state:
        dy, dlast = cotangent
        inputs["dy"], inputs["dlast"] = dy.astype(u.dtype), dlast.astype(jnp.float32)
    else:
        inputs["dy"] = cotangent.astype(u.dtype)
    g = per_device(functools.partial(_backward, tuning=tuning, delta_softplus=softplus, interpret=interpret), inputs,
                   REPLICATED)
    if _discretised_outside(given, delta_softplus, tuning, "backward"):
        g = _outer_delta_grads(g, given, inputs["delta"], delta_softplus)
    return (_u_grad(g["du"], u), g["ddelta"], _reduced(g, "dA", A), g["dB"].astype(B.dtype), g["dC"].astype(C.dtype),
            _reduced(g, "dD", D), g.get("dz"), _reduced(g, "dbias", delta_bias), None)


_scan.defvjp(_scan_fwd, _scan_bwd)


def _gated_outside(u, delta, A, B, C, D, z, delta_bias, order, delta_softplus, return_last_state, interpret,
                   tuning):
    """The kernels without z, then y * silu(z) in XLA, in float32 (differentiated by JAX)."""
    out = _scan(u, delta, A, B, C, D, None, delta_bias, order, delta_softplus, return_last_state, interpret, tuning,
                False)
    y, last = out if return_last_state else (out, None)
    y = finish_output(y.astype(jnp.float32), None, None, z, y.dtype)
    return (y, last) if return_last_state else y


@functools.partial(jax.custom_vjp, nondiff_argnums=(9, 10, 11, 12))
def _scan_gate_in_forward(u, delta, A, B, C, D, z, delta_bias, order, delta_softplus, return_last_state, interpret,
                          tuning):
    """``gate_in_kernel="forward"``: the forward walk gates y itself when no gradient is taken (no XLA pass over y
    and z); differentiated, the kernels run without z and XLA gates (``_gated_outside``), so the backward is the
    default's."""
    return _scan(u, delta, A, B, C, D, z, delta_bias, order, delta_softplus, return_last_state, interpret, tuning,
                 False)


def _scan_gate_in_forward_fwd(u, delta, A, B, C, D, z, delta_bias, order, delta_softplus, return_last_state,
                              interpret, tuning):
    def gated(u, delta, A, B, C, D, z, delta_bias):
        return _gated_outside(u, delta, A, B, C, D, z, delta_bias, order, delta_softplus, return_last_state,
                              interpret, tuning)
    return jax.vjp(gated, u, delta, A, B, C, D, z, delta_bias)


def _scan_gate_in_forward_bwd(delta_softplus, return_last_state, interpret, tuning, vjp, cotangent):
    return (*vjp(cotangent), None)


_scan_gate_in_forward.defvjp(_scan_gate_in_forward_fwd, _scan_gate_in_forward_bwd)


def selective_scan_pallas(u, delta, A, B, C, D, z, delta_bias, *, delta_softplus: bool,
                          return_last_state: bool, interpret: bool, design: str = "auto",
                          block_d: int | tuple[int | None, int | None] | None = None, chunk: int | None = None,
                          num_warps: tuple[int, int] | None = None, unroll: int | None = None, order=None,
                          hoist_loads: bool | None = None, delta_in_kernel: bool | str | None = None,
                          prefetch_order: bool | None = None, prefetch_rows: bool | None = None,
                          gate_in_kernel: bool | str | None = None, chain_in_kernel: bool | None = None,
                          pair_chunks: bool | None = None, poly_exp: int | tuple[int, int] | None = None,
                          sum_groups: bool = False):
    """Selective scan on validated inputs (see ``ssm_jax.ssm.selective_scan``), fused in Pallas.

    Args:
      u, delta: (batch, L, D), or u (batch, L, D / G) shared by the G groups (``Layout.shared_u``); A: (D, N);
        B, C: grouped (batch, L, G, N); D, delta_bias: (D,) or None;
        z: (batch, L, D) or None.
      delta_softplus, return_last_state: as in ``selective_scan``.
      interpret: run the kernels in Pallas interpret mode (CPU, for tests).
      design: "serial" (one step after another), "split" (serial walks over segments of the sequence, chained
        by a scan over segments) or "auto" (``AUTO_DESIGN``).
      block_d: channels per program (power of two), or a (forward, backward) pair, either None for its default: the
        design's cap (32 serial; split 16 backward and ``split.WIDE_FORWARD`` forward, or 16 when the forward's grid
        would fall below ``split.WIDE_FORWARD_GRID`` programs, ``split.WIDE_INFERENCE_GRID`` when no gradient is
        taken), or the channels per group rounded up to a power of
        two when fewer.
      chunk: serial, time steps per checkpoint (default 16); split, time steps per segment (a power of two;
        default 128, or the whole sequence when the batch rows x channel blocks per device already number
        ``split.FULL_GRID``).
      num_warps: (forward, backward) warps per program (default: the design's).
      unroll: split only: steps per unrolled chunk and between checkpoints inside a segment (a power of two;
        default as measured: 2 when the sequence is cut into segments, ``split.UNROLL_SEGMENTED``, else 4,
        ``split.UNROLL``); fewer steps hold fewer state tiles in the backward's registers and save more checkpoints
        (more memory).
      order: None, or (G, L) integers, each row a permutation of 0..L-1: group g's channels visit the sequence
        in the order order[g] (step t reads and writes position order[g, t]; y comes back at the positions),
        for a 2-D map scanned along K orders without gathered copies.
      hoist_loads: issue every load of a chunk before its first store (more registers, one memory latency a chunk
        instead of one a step); None (default): in the forward kernels only, as measured (``HOIST_BY_DEFAULT``).
      delta_in_kernel: True applies delta_bias and softplus inside each kernel pass; False computes
        softplus(delta + bias) once, in float32, before the kernels (and its gradient after them); "forward" inside
        the forward kernels, and as False for the backward kernel; "inference" inside the forward kernels when no
        gradient is taken, and as False when one is; None (the default) "forward" for 16-bit inputs and
        "inference" for float32 (``DELTA_IN_KERNEL_BY_ITEMSIZE``). Discretised in or out of the kernels, y differs
        by the rounding of softplus (``common.softplus``).
      prefetch_order: with ``order``: load each chunk's positions one chunk ahead, so its row loads do not wait on
        them (None, the default: on, ``PREFETCH_ORDER``).
      prefetch_rows: the forward and segment-summary kernels issue each chunk's loads (rows and positions) one chunk
        ahead and hold them through the chunk before, so their latency overlaps its work; the backward kernel's
        reverse walk issues each step's loads one step ahead, before the stores of the step after it (more
        registers; None, the default: on, ``PREFETCH_ROWS``).
      gate_in_kernel: True applies the gate y * silu(z) inside the kernels; False runs them without z and gates
        their y in XLA (differentiated by JAX), which frees the backward kernel of z's loads, its sigmoid, the
        recomputed y and the dz store, for two elementwise passes over y; with bfloat16 inputs y is rounded to
        bfloat16 before the gate as well as after it. "forward": in the forward walk when no gradient is taken,
        outside when differentiated (the backward is False's); with bfloat16 inputs the two differ by y's rounding
        before the gate. None, the default: ``GATE_IN_KERNEL``, "forward".
      chain_in_kernel: split only: chain the segment summaries into the state entering each segment with one kernel
        (``chain.py``) instead of XLA's associative scan over segments (None, the default: ``CHAIN_IN_KERNEL``).
      pair_chunks: with ``prefetch_rows``, the forward and segment-summary kernels walk two chunks an iteration, so
        the rows loaded ahead need no register copies at the loop's back edge (``Layout.pair_chunks``; None, the
        default: ``PAIR_CHUNKS``, on).
      poly_exp: (segment-state kernel, forward walk), or one count for both: of every ``common.POLY_PACK`` decays a
        thread computes, how many come from a polynomial on the FMA pipe (``common.exp2_poly``, within 1.6e-7 of
        2^x) rather than ``ex2.approx`` on the special-function pipe; None, the default: on the GPU as measured by
        dtype (``POLY_EXP_BY_ITEMSIZE``), or none where a thread's decays do not come in whole packs; in interpret
        mode none. Interpret mode takes the polynomial for every decay of the kernels given a count.
      sum_groups: y summed over the G groups, (batch, L, D / G), as in ``selective_scan``; the backward kernel then
        reads y's gradient one group wide (``Layout.shared_dy``; with z gated outside the kernels, the sum follows
        the gate and its gradient is broadcast to the groups in XLA).

    Returns:
      y (batch, L, D) in u's dtype (D / G channels with ``sum_groups``), or (y, last_state (batch, D, N) float32).
    """
    if order is not None:
        order = jnp.asarray(order)
        if order.shape != (B.shape[2], u.shape[1]) or not jnp.issubdtype(order.dtype, jnp.integer):
            raise ValueError(f"selective_scan_pallas: order has shape {order.shape} and dtype {order.dtype}, "
                             f"expected integers of shape (groups, L) = {(B.shape[2], u.shape[1])}")
        order = order.astype(jnp.int32)
    blocks = tuple(block_d) if isinstance(block_d, (tuple, list)) else (block_d, block_d)
    if len(blocks) != 2:
        raise ValueError(f"selective_scan_pallas: block_d={block_d!r}, expected an int or a (forward, backward) pair")
    if delta_in_kernel is None:
        delta_in_kernel = default_delta_in_kernel(u.dtype)
    if not isinstance(delta_in_kernel, (bool, str)) or delta_in_kernel not in DELTA_INSIDE:
        raise ValueError(f"selective_scan_pallas: delta_in_kernel={delta_in_kernel!r}, expected None, False, True, "
                         f"'forward' or 'inference'")
    poly = None if poly_exp is None else tuple(poly_exp) if isinstance(poly_exp, (tuple, list)) else (poly_exp,) * 2
    if poly is not None and (len(poly) != 2 or not all(isinstance(n, int) and 0 <= n <= POLY_PACK for n in poly)):
        raise ValueError(f"selective_scan_pallas: poly_exp={poly_exp!r}, expected an int or a pair of ints in "
                         f"0..{POLY_PACK}")
    tuning = Tuning(design, blocks, chunk, None if num_warps is None else tuple(num_warps), unroll, hoist_loads,
                    delta_in_kernel,
                    None if prefetch_order is None else bool(prefetch_order),
                    None if prefetch_rows is None else bool(prefetch_rows),
                    None if chain_in_kernel is None else bool(chain_in_kernel),
                    None if pair_chunks is None else bool(pair_chunks), poly)
    gate = GATE_IN_KERNEL if gate_in_kernel is None else gate_in_kernel
    if gate not in (False, True, "forward"):
        raise ValueError(f"selective_scan_pallas: gate_in_kernel={gate_in_kernel!r}, expected None, False, True or "
                         f"'forward'")
    gate = gate if gate == "forward" else bool(gate)
    args = (u, delta, A, B, C, D, z, delta_bias, order, bool(delta_softplus), bool(return_last_state),
            bool(interpret), tuning)
    if z is None or gate is True:
        return _scan(*args, bool(sum_groups))
    return _summed_output((_scan_gate_in_forward if gate == "forward" else _gated_outside)(*args), B.shape[2],
                          bool(sum_groups))
