"""Time Pallas kernel designs and block sizes on the scan benchmark shapes, with a correctness check.

    python benchmarks/scan_tune.py --configs tiled:16:64:4:4,serial:32:16:4:8 --dtypes float32,bfloat16 \
        --check --json $OUT/tune.jsonl --budget 400

A config is ``benchmarks.kernel_configs.FIELDS`` (unroll: split only, the steps between checkpoints inside a
segment, 0 or left out for the default ``split.UNROLL``; hoist: 1 to issue a chunk's loads before its stores in
every kernel, 0 in none, left out or empty for the default, the forward direction only; outside: 1 to discretise
delta once outside the kernels, ``delta_in_kernel=False``; prefetch: 1 / 0 to load an in-place shape's positions a
chunk ahead or not, ``prefetch_order``; rows: 1 for every forward-direction and summary load a chunk ahead,
``prefetch_rows``; gate: 0 to gate y outside the kernels, ``gate_in_kernel=False``). For each dtype x shape x config
(configs innermost, so a spent budget cuts shapes, not configs, and configs compared on a shape run minutes apart at
most) it prints forward and forward+backward milliseconds (median of 3 batches of ``--calls`` back-to-back calls, so
host dispatch overlaps the GPU work as in training) and, with ``--check``, the relative error of y and the worst
input gradient against the ``chunked`` scan. Rows print as they finish; when the time budget is spent the remaining
rows are skipped and said so. Each timing first calls its function for ``--warmup_s`` seconds
(``benchmarks.scan.warm_up``), so no row is timed on a GPU still raising its clocks (on 2026-11-30 the first row of
a call ran up to 1.5x slower than the same config in a later position). GPU only (interpret mode is not a timing).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.check_pallas import NAMES, rel  # noqa: E402
from benchmarks.kernel_configs import kernel_fns, parse_config  # noqa: E402
from benchmarks.rows import append_jsonl, select_shapes  # noqa: E402
from benchmarks.scan import MODEL_SHAPES, SHAPES, make_inputs, warm_up  # noqa: E402
from ssm_jax.ssm import selective_scan  # noqa: E402


def batched_ms(fn, *args, calls: int, warmup_s: float) -> float:
    """Median over 3 batches of ``calls`` back-to-back calls, per call, in ms (after ``warmup_s`` seconds of
    warm-up calls)."""
    warm_up(fn, *args, calls=1, seconds=warmup_s)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        out = [fn(*args) for _ in range(calls)]
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / calls)
    return 1e3 * float(np.median(times))


def check(forward_backward, args, cotangent, order=None) -> dict:
    """Relative errors of y and the worst gradient against the ``chunked`` scan (absent inputs skipped)."""
    def reference(args, cotangent):
        y, vjp = jax.vjp(lambda *a: selective_scan(*a, delta_softplus=True, impl="chunked", order=order), *args)
        return y, vjp(cotangent)

    y, grads = forward_backward(args, cotangent)
    y_ref, grads_ref = jax.jit(reference)(args, cotangent)
    present = [(n, g, r) for n, g, r in zip(NAMES, grads, grads_ref) if g is not None]
    errors = {n: rel(g, r) for n, g, r in present}
    worst = max(errors, key=errors.get)
    finite = bool(jnp.isfinite(y).all()) and all(bool(jnp.isfinite(g).all()) for _, g, _ in present)
    return {"fwd_err": rel(y, y_ref), "worst_grad": worst, "grad_err": errors[worst], "finite": finite}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiled:16:64:4:4")
    parser.add_argument("--shapes", help="comma-separated shape names (default: the five generic ones of "
                        "benchmarks/scan.py; its MODEL_SHAPES by name)")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--check", action="store_true", help="compare with the chunked scan (float32 rows)")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds; later rows are skipped")
    parser.add_argument("--json", help="append one JSON line per row to this file")
    parser.add_argument("--warmup_s", type=float, default=1.0, help="seconds of warm-up calls before each timing")
    args = parser.parse_args()
    if jax.default_backend() != "gpu":
        raise SystemExit("scan_tune.py times GPU kernels; no GPU here (CPU tests use interpret mode)")
    shapes = select_shapes(SHAPES + MODEL_SHAPES, args.shapes, default=SHAPES)
    start = time.perf_counter()
    print(f"{'config':<27}{'shape':<14}{'dtype':<10}{'fwd ms':>9}{'fwd+bwd ms':>12}  check", flush=True)
    configs = [(text, parse_config(text)) for text in args.configs.split(",")]
    for dtype in args.dtypes.split(","):
        for shape in shapes:
            for text, config in configs:
                forward, forward_backward = kernel_fns(config, shape.order())
                if time.perf_counter() - start > args.budget:
                    print(f"{text:<27}{shape.name:<14}{dtype:<10} skipped: time budget spent", flush=True)
                    continue
                row = {"config": text, "shape": shape.name, "dtype": dtype}
                try:
                    inputs, cotangent = make_inputs(shape, jnp.dtype(dtype))
                    row["fwd_ms"] = batched_ms(forward, *inputs, calls=args.calls, warmup_s=args.warmup_s)
                    row["fwd_bwd_ms"] = batched_ms(forward_backward, inputs, cotangent, calls=args.calls,
                                                   warmup_s=args.warmup_s)
                    if args.check and dtype == "float32":
                        row.update(check(forward_backward, inputs, cotangent, shape.order()))
                except Exception as e:  # a config that fails to compile or run is a result too
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                note = row.get("error") or (f"y {row['fwd_err']:.1e}, {row['worst_grad']} {row['grad_err']:.1e}"
                                            if "fwd_err" in row else "")
                times = (f"{row['fwd_ms']:9.3f}{row['fwd_bwd_ms']:12.3f}" if "fwd_bwd_ms" in row else " " * 21)
                print(f"{text:<27}{shape.name:<14}{dtype:<10}{times}  {note}", flush=True)
                append_jsonl(args.json, row)


if __name__ == "__main__":
    main()
