"""Where the Pallas selective scan's time goes: the passes of its ``split`` design (what ``impl="auto"`` runs on GPU)
timed one by one, beside the whole forward+backward, on the shapes of ``benchmarks/scan.py``.

    python benchmarks/scan_parts.py --json=$OUT/scan_parts.jsonl   # GPU: the full shapes
    python benchmarks/scan_parts.py --small                        # CPU: interpret mode (a check, not a timing)

Parts (``kernels/selective_scan/split.py``), each jitted alone on what the part before it hands over, in the order
a training step runs them:

* forward: ``discretise`` (softplus(delta + bias) in XLA, before the kernels, as the default does for float32
  inputs; with 16-bit ones the default's forward kernels discretise it themselves, ``ops.DELTA_IN_KERNEL_BY_ITEMSIZE``,
  so there the parts time the float32 path in bf16 and ``whole`` the default),
  ``summaries`` (each segment walked from a zero state: its end state and sum of delta), ``chain`` (the
  chain over segments, one kernel or XLA's associative scan as ``ops.CHAIN_IN_KERNEL`` says: the state entering
  each), ``walk`` (the serial forward kernel per segment from
  that state: y and the checkpoints);
* backward: ``adjoint summaries``, ``adjoint chain``, ``backward walk`` (the serial backward kernel per segment),
  ``reductions`` (dA, dD, d delta_bias summed over segments and rows; dB, dC over channel blocks; ddelta and
  d delta_bias through the discretisation).

``whole`` is the forward and the vector-Jacobian product of ``selective_scan(impl="pallas")``: the parts should
add up to about it (they are launched separately, so a little more). ``ms`` is the median of ``--repeats`` waited
calls after warm-up calls (``benchmarks.scan.median_time``; 2 s of them on GPU), which pays the host's dispatch
latency on every call; ``b2b ms`` the per-call time of calls issued back to back (``benchmarks.scan.batched_time``),
the device's own time, from which the shares are taken (a sub-millisecond part is mostly latency in ``ms``). Shapes
the auto design walks in one segment (L at most ``SEGMENT``, or a grid already full: ``split.default_segment``) have
no summary passes and are refused.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.rows import append_jsonl, select_shapes  # noqa: E402
from benchmarks.scan import (BATCH_CALLS, SHAPES, SMALL_SHAPES, WARMUP_S, Shape, batched_time,  # noqa: E402
                             make_inputs, median_time)
from kernels.selective_scan import backward, forward, ops, split, summaries  # noqa: E402
from kernels.selective_scan import chain as chain_kernel  # noqa: E402
from kernels.selective_scan.common import Layout  # noqa: E402
from ssm_jax.ssm import selective_scan  # noqa: E402

FORWARD_PARTS = ("discretise", "summaries", "chain", "walk")
BACKWARD_PARTS = ("adjoint summaries", "adjoint chain", "backward walk", "reductions")
PARTS = (*FORWARD_PARTS, *BACKWARD_PARTS, "whole")
SEGMENT = split.SEGMENT  # steps per segment of the auto design on a grid short of programs


class Setup(NamedTuple):
    """A shape's benchmark inputs with the split design's layouts and kernel keywords, as the differentiated
    float32 default runs them (delta discretised before the kernels)."""

    args: tuple
    cotangent: jax.Array
    tuning: ops.Tuning
    lay: Layout  # the forward's
    bwd_lay: Layout
    given: dict  # the scan's inputs by name
    outside: bool  # delta discretised before the kernels
    fwd_kw: dict
    bwd_kw: dict

    def discretise(self, given: dict) -> dict:
        """The kernels' inputs: delta discretised in XLA."""
        return ops._kernel_inputs(given, True, self.tuning, "forward")[0]


def setup(shape: Shape, dtype, interpret: bool) -> Setup:
    """``Setup`` of a shape the auto design cuts into segments (a ValueError for one it does not)."""
    args, cotangent = make_inputs(shape, dtype)
    u, delta, A, B, C, D, z, delta_bias = args
    tuning = ops.Tuning(delta_in_kernel=False)
    _, _, lay, fwd_warps, bwd_warps = ops._design(tuning, u, B, A, interpret=interpret)
    bwd_lay = ops._design(tuning, u, B, A, direction="backward", interpret=interpret)[2]
    if not lay.segment:
        raise ValueError(f"{shape.name}: L = {shape.length} is one segment for the auto design; it has no summary "
                         f"passes")
    given = ops._inputs(u, delta, A, B, C, D, z, delta_bias, None)
    outside = ops._discretised_outside(given, True, tuning, "forward")
    softplus = not outside
    return Setup(args, cotangent, tuning, lay, bwd_lay, given, outside,
                 dict(delta_softplus=softplus, interpret=interpret, num_warps=fwd_warps),
                 dict(delta_softplus=softplus, interpret=interpret, num_warps=bwd_warps))


def part_functions(shape: Shape, dtype, interpret: bool) -> dict:
    """{part: (function, arguments)}: each part's arguments are what the parts before it return on this shape's
    inputs, so every part is timed on real intermediate values. Also "outputs": (y, gradients) of the parts
    composed, for checking against the whole scan."""
    prepared = setup(shape, dtype, interpret)
    args, cotangent, _, lay, bwd_lay, given, outside, fwd_kw, bwd_kw = prepared
    discretise = prepared.discretise

    def state_summaries(inputs):
        return summaries.states(inputs, lay, **fwd_kw)

    def chain(inputs, total, dsum):
        if lay.chain_kernel:
            return chain_kernel.chain(total, dsum, inputs["A"], lay, reverse=False, interpret=interpret)[0]
        return split.entering_states(inputs, total, dsum)[0]

    def walk(inputs, h_in):
        return forward.forward(dict(inputs, h_in=h_in), lay, save="chunks", **fwd_kw)

    def adjoint_summaries(inputs):
        return summaries.adjoints(inputs, bwd_lay, **bwd_kw)

    def adjoint_chain(inputs, total, dsum):
        if bwd_lay.chain_kernel:
            return chain_kernel.chain(total, dsum, inputs["A"], bwd_lay, reverse=True, interpret=interpret)[0]
        return split.entering_adjoints(inputs, total, dsum, None)

    def backward_walk(inputs, h_in):
        return backward.backward(dict(inputs, h_in=h_in), bwd_lay, **bwd_kw)

    def reductions(grads, given, discretised):
        grads = ops.sum_blocks(split.sum_segments(grads, bwd_lay), bwd_lay)
        if outside:
            grads = ops._outer_delta_grads(grads, given, discretised, True)
        return {k: v.sum(0) if k in ("dA", "dD", "dbias") else v for k, v in grads.items()}

    def whole(args, cotangent):
        y, vjp = jax.vjp(lambda *a: selective_scan(*a, delta_softplus=True, impl="pallas"), *args)
        return y, vjp(cotangent)

    inputs = jax.jit(discretise)(given)
    total, dsum = jax.jit(state_summaries)(inputs)
    h_in = jax.jit(chain)(inputs, total, dsum)
    y, states = jax.jit(walk)(inputs, h_in)
    bwd_inputs = dict(inputs, states=states, dy=cotangent.astype(args[0].dtype))
    adjoint_total, adjoint_dsum = jax.jit(adjoint_summaries)(bwd_inputs)
    h_adjoint = jax.jit(adjoint_chain)(bwd_inputs, adjoint_total, adjoint_dsum)
    grads = jax.jit(backward_walk)(bwd_inputs, h_adjoint)
    return {
        "discretise": (discretise, (given,)),
        "summaries": (state_summaries, (inputs,)),
        "chain": (chain, (inputs, total, dsum)),
        "walk": (walk, (inputs, h_in)),
        "adjoint summaries": (adjoint_summaries, (bwd_inputs,)),
        "adjoint chain": (adjoint_chain, (bwd_inputs, adjoint_total, adjoint_dsum)),
        "backward walk": (backward_walk, (bwd_inputs, h_adjoint)),
        "reductions": (reductions, (grads, given, inputs["delta"])),
        "whole": (whole, (args, cotangent)),
        "outputs": (y, jax.jit(reductions)(grads, given, inputs["delta"])),
    }


def run(shapes, dtype, repeats: int, json_path: str | None, calls: int = BATCH_CALLS) -> list[dict]:
    """Time every part of every shape (``calls`` a back-to-back batch), printing a row as each finishes; returns
    the rows."""
    warmup_s = WARMUP_S if jax.default_backend() == "gpu" else 0.0
    interpret = jax.default_backend() != "gpu"
    print(f"{'shape':<18}{'part':<20}{'ms':>9}{'b2b ms':>9}{'share':>8}", flush=True)
    rows = []
    for shape in shapes:
        functions = part_functions(shape, dtype, interpret)
        times, b2b = {}, {}
        for part in PARTS:
            fn, args = jax.jit(functions[part][0]), functions[part][1]
            times[part] = median_time(fn, *args, repeats=repeats, warmup_s=warmup_s)
            b2b[part] = batched_time(fn, *args, calls=calls, repeats=repeats)
        for part in PARTS:
            row = {"shape": shape.name, "part": part, "dtype": jnp.dtype(dtype).name, "seconds": times[part],
                   "batched_seconds": b2b[part], "share_of_whole": b2b[part] / b2b["whole"]}
            rows.append(row)
            print(f"{shape.name:<18}{part:<20}{1e3 * row['seconds']:9.3f}{1e3 * b2b[part]:9.3f}"
                  f"{row['share_of_whole']:8.2f}", flush=True)
            append_jsonl(json_path, row)
        forward_s = sum(b2b[p] for p in FORWARD_PARTS)
        backward_s = sum(b2b[p] for p in BACKWARD_PARTS)
        print(f"{shape.name:<18}parts back to back: forward {1e3 * forward_s:.3f} ms + backward "
              f"{1e3 * backward_s:.3f} ms = {(forward_s + backward_s) / b2b['whole']:.2f} of the whole", flush=True)
    return rows


def segmented(shape: Shape) -> bool:
    """Whether the auto design cuts this shape's sequence into segments (only then are there parts to time)."""
    u = jax.ShapeDtypeStruct((shape.rows, shape.length, shape.dim), jnp.float32)
    B = jax.ShapeDtypeStruct((shape.rows, shape.length, shape.groups, shape.d_state), jnp.float32)
    A = jax.ShapeDtypeStruct((shape.dim, shape.d_state), jnp.float32)
    return bool(ops._design(ops.Tuning(), u, B, A)[2].segment)


def main() -> None:
    on_gpu = jax.default_backend() == "gpu"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action=argparse.BooleanOptionalAction, default=not on_gpu,
                        help="shrunken shapes in interpret mode (default when no GPU)")
    parser.add_argument("--shapes", help="comma-separated shape names (default: all the auto design segments)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="append one JSON line per row to this file")
    args = parser.parse_args()
    shapes = select_shapes([s for s in (SMALL_SHAPES if args.small else SHAPES) if segmented(s)], args.shapes)
    print(f"# {jax.devices()[0].device_kind} ({jax.default_backend()}), {args.dtype}, Pallas split design, "
          f"median of {args.repeats}", flush=True)
    run(shapes, jnp.dtype(args.dtype), args.repeats, args.json)


if __name__ == "__main__":
    main()
