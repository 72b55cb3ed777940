"""Time Pallas kernel designs and block sizes on the scan benchmark shapes, with a correctness check.

    python benchmarks/scan_tune.py --configs split:32/16:0:1:1,serial:32:16:4:8 --dtypes float32,bfloat16 \
        --check --json $OUT/tune.jsonl --budget 400

A config is ``benchmarks.kernel_configs.FIELDS`` (unroll: split only, the steps between checkpoints inside a segment, 0
or left out for the default by layout, ``split.layout``; hoist: 1 to issue a chunk's loads before its stores in every
kernel, 0 in none, left out or empty for the default, the forward direction only; outside: 1 to discretise delta once
outside the kernels, ``delta_in_kernel=False``, 0 in each kernel, 2 in the forward kernels only, 3 in them when no
gradient is taken; prefetch: 1 / 0 to load an in-place shape's positions a chunk ahead or not, ``prefetch_order``; rows:
1 for every forward-direction and summary load a chunk ahead, ``prefetch_rows``; gate: 0 to gate y outside the kernels,
``gate_in_kernel=False``, 1 in them, 2 in the forward walk when no gradient is taken; chain and pair: the split chain
as one kernel and ``pair_chunks``, each 1 / 0; major: empty, ``state_major`` having been removed; poly: decays of every
8 from the FMA-pipe polynomial, one count or ``states/walk``, ``poly_exp``). For each dtype x
shape it compiles every config, warms each up for ``--warmup_s`` seconds (``benchmarks.scan.warm_up``), then times
them in ``--rounds`` interleaved rounds, each round one batch of ``--calls`` back-to-back calls per config (so host
dispatch overlaps the GPU work as in training), and prints per config the median over rounds of the forward and
forward+backward milliseconds, the forward over its copy floor (``benchmarks.scan.times_floor``, at the copy
bandwidth measured once at the start) and, with ``--check``, the relative error of y and the worst input gradient
against the ``chunked`` scan (``--forward-only``: the forward alone, as inference runs it, compiled, timed and
checked without its gradient). Interleaving puts a slow spell of the GPU or the host (another process on the
machine) into one round of every config instead of into every batch of one: timed one config after another, the
first config of a shape ran forward+backward up to 4x slower than the same config timed last (sessions 12 and 13,
NOTES.md). Rows print as each shape finishes; when the time budget is spent the remaining shapes are skipped and
said so. GPU only (interpret mode is not a timing).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.check_pallas import NAMES, rel  # noqa: E402
from benchmarks.kernel_configs import FIELDS, config_width, kernel_fns, parse_config  # noqa: E402
from benchmarks.rows import append_jsonl, select_shapes  # noqa: E402
from benchmarks.scan import (MODEL_SHAPES, SHAPES, batched_time, copy_bandwidth, make_inputs,  # noqa: E402
                             times_floor, warm_up)
from ssm_jax.ssm import selective_scan  # noqa: E402


def interleaved_ms(fns, args, calls: int, rounds: int) -> list[float]:
    """Per function of ``fns`` (each called as ``fn(*args)``), the median over ``rounds`` of the per-call time in ms
    of a batch of ``calls`` back-to-back calls; every round times each function once, in order."""
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, spent in zip(fns, times):
            spent.append(batched_time(fn, *args, calls=calls, repeats=1))
    return [1e3 * float(np.median(spent)) for spent in times]


def chunked(order=None, sum_groups: bool = False):
    """The ``chunked`` scan of a shape's inputs, the reference of the checks."""
    return lambda *a: selective_scan(*a, delta_softplus=True, impl="chunked", order=order, sum_groups=sum_groups)


def check(forward, forward_backward, args, cotangent, order=None, sum_groups: bool = False) -> dict:
    """Relative errors against the ``chunked`` scan of y, alone and under differentiation (the kernels' paths
    differ), and of the worst gradient (absent inputs skipped)."""
    def reference(args, cotangent):
        y, vjp = jax.vjp(chunked(order, sum_groups), *args)
        return y, vjp(cotangent)

    y, grads = forward_backward(args, cotangent)
    y_alone = forward(*args)
    y_ref, grads_ref = jax.jit(reference)(args, cotangent)
    present = [(n, g, r) for n, g, r in zip(NAMES, grads, grads_ref) if g is not None]
    errors = {n: rel(g, r) for n, g, r in present}
    worst = max(errors, key=errors.get)
    finite = all(bool(jnp.isfinite(a).all()) for a in (y, y_alone, *(g for _, g, _ in present)))
    return {"fwd_err": rel(y_alone, y_ref), "vjp_fwd_err": rel(y, y_ref), "worst_grad": worst,
            "grad_err": errors[worst], "finite": finite}


def check_forward(forward, args, y_ref) -> dict:
    """``check``'s relative error of y alone against ``y_ref`` (``chunked``'s), for a forward timed without its
    gradient."""
    y = forward(*args)
    return {"fwd_err": rel(y, y_ref), "finite": bool(jnp.isfinite(y).all())}


def measure_shape(shape, dtype, configs, args, bandwidth: float) -> list[dict]:
    """One row per config on one shape and dtype: its times (the forward also over its copy floor at ``bandwidth``
    bytes/s), its check, or the error it failed with."""
    inputs, cotangent = make_inputs(shape, jnp.dtype(dtype))
    y_ref = (jax.jit(chunked(**shape.scan_kwargs()))(*inputs)
             if args.forward_only and args.check and dtype == "float32" else None)
    rows, timed = [], []
    for text, config in configs:
        row = {"config": text, "shape": shape.name, "dtype": dtype}
        forward, forward_backward = kernel_fns(config, **shape.scan_kwargs())
        try:
            warm_up(forward, *inputs, calls=1, seconds=args.warmup_s)
            if not args.forward_only:
                warm_up(forward_backward, inputs, cotangent, calls=1, seconds=args.warmup_s)
            if args.check and dtype == "float32":
                row.update(check_forward(forward, inputs, y_ref) if args.forward_only else
                           check(forward, forward_backward, inputs, cotangent, **shape.scan_kwargs()))
            timed.append((row, forward, forward_backward))
        except Exception as e:  # a config that fails to compile or run is a result too
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        rows.append(row)
    if timed:
        fwd = interleaved_ms([f for _, f, _ in timed], inputs, calls=args.calls, rounds=args.rounds)
        fwd_bwd = ([math.nan] * len(timed) if args.forward_only else
                   interleaved_ms([fb for _, _, fb in timed], (inputs, cotangent), calls=args.calls,
                                  rounds=args.rounds))
        for (row, _, _), f, fb in zip(timed, fwd, fwd_bwd):
            row.update(fwd_ms=f, fwd_bwd_ms=fb, fwd_floor=times_floor(f / 1e3, shape, dtype, bandwidth))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="split:32/16:0:1:1",
                        help=f"comma-separated configs, each {FIELDS} (default: the auto design's)")
    parser.add_argument("--shapes", help="comma-separated shape names (default: the five generic ones of "
                        "benchmarks/scan.py; its MODEL_SHAPES by name)")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--check", action="store_true", help="compare with the chunked scan (float32 rows)")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds; later shapes are skipped")
    parser.add_argument("--json", help="append one JSON line per row to this file")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds; the median is kept")
    parser.add_argument("--forward-only", action="store_true",
                        help="time the forward alone (no gradient): compiles half the programs; fwd+bwd prints nan")
    parser.add_argument("--warmup_s", type=float, default=1.0, help="seconds of warm-up calls before each timing")
    args = parser.parse_args()
    if jax.default_backend() != "gpu":
        raise SystemExit("scan_tune.py times GPU kernels; no GPU here (CPU tests use interpret mode)")
    shapes = select_shapes(SHAPES + MODEL_SHAPES, args.shapes, default=SHAPES)
    start = time.perf_counter()
    configs = [(text, parse_config(text)) for text in args.configs.split(",")]
    bandwidth = copy_bandwidth(2**30, repeats=max(args.rounds, 3))
    print(f"copy bandwidth (read+write): {bandwidth / 1e9:.1f} GB/s", flush=True)
    width = config_width(text for text, _ in configs)
    print(f"{'config':<{width}}{'shape':<14}{'dtype':<10}{'fwd ms':>9}{'x floor':>8}{'fwd+bwd ms':>12}  check",
          flush=True)
    for dtype in args.dtypes.split(","):
        for shape in shapes:
            if time.perf_counter() - start > args.budget:
                print(f"{'(all configs)':<{width}}{shape.name:<14}{dtype:<10} skipped: time budget spent", flush=True)
                continue
            for row in measure_shape(shape, dtype, configs, args, bandwidth):
                note = row.get("error") or (f"y {row['fwd_err']:.1e} ({row['vjp_fwd_err']:.1e} differentiated), "
                                            f"{row['worst_grad']} {row['grad_err']:.1e}" if "grad_err" in row else
                                            f"y {row['fwd_err']:.1e}" if "fwd_err" in row else "")
                times = (f"{row['fwd_ms']:9.3f}{row['fwd_floor']:8.2f}{row['fwd_bwd_ms']:12.3f}" if "fwd_bwd_ms" in row
                         else " " * 29)
                print(f"{row['config']:<{width}}{shape.name:<14}{dtype:<10}{times}  {note}", flush=True)
                append_jsonl(args.json, row)


if __name__ == "__main__":
    main()
