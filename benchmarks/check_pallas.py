"""Correctness of the Pallas scan at benchmark sizes, to run on the GPU before any timing is quoted.

    python benchmarks/check_pallas.py            # GPU: every shape of benchmarks/scan.py, forward and gradients
    python benchmarks/check_pallas.py --small    # CPU (interpret mode): the shrunken shapes
    python benchmarks/check_pallas.py --shapes 8-dir,long   # a subset

For each shape, on fresh random inputs: every output and gradient must be finite; the forward is compared
with the ``chunked`` scan (||diff|| / ||ref||, pass under 1e-5 in float32, 1e-2 with ``--dtype bfloat16``), both
as run under differentiation and alone (which takes other kernel paths: no checkpoints, the gate where
``ops.GATE_IN_KERNEL`` puts it), and every input's gradient with ``chunked``'s (pass under 1e-4, or 1e-2 in bf16).
Prints a table and exits non-zero if any row fails.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.rows import select_shapes  # noqa: E402
from benchmarks.scan import SHAPES, SMALL_SHAPES, make_inputs  # noqa: E402
from ssm_jax.ssm import selective_scan  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def rel(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def check(shape, dtype, seed: int) -> dict:
    args, cotangent = make_inputs(shape, dtype, seed)

    def run(impl, args, cotangent):
        fn = lambda *a: selective_scan(*a, delta_softplus=True, impl=impl)
        y, vjp = jax.vjp(fn, *args)
        return y, vjp(cotangent)

    # Inputs go in as arguments: closed over, they became constants of the compiled programs (chunked's compile on
    # CPU at vmamba-64x64: 16.9 s against 4.9 s; on a GPU three full shapes took 9 minutes, the GPU near idle).
    y, grads = jax.jit(functools.partial(run, "pallas"))(args, cotangent)
    y_alone = jax.jit(lambda *a: selective_scan(*a, delta_softplus=True, impl="pallas"))(*args)
    y_ref, grads_ref = jax.jit(functools.partial(run, "chunked"))(args, cotangent)
    finite = all(bool(jnp.all(jnp.isfinite(a))) for a in (y, y_alone, *grads))
    return {"fwd": rel(y, y_ref), "fwd_alone": rel(y_alone, y_ref),
            "grads": {n: rel(g, r) for n, g, r in zip(NAMES, grads, grads_ref)}, "finite": finite}


def main() -> None:
    on_gpu = jax.default_backend() == "gpu"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action=argparse.BooleanOptionalAction, default=not on_gpu)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shapes", help="comma-separated shape names (default: all)")
    args = parser.parse_args()
    shapes = select_shapes(SMALL_SHAPES if args.small else SHAPES, args.shapes)
    dtype = jnp.dtype(args.dtype)
    fwd_tol, grad_tol = (1e-5, 1e-4) if dtype == jnp.float32 else (1e-2, 1e-2)
    print(f"{'shape (rows,L,D,N)':<36}{'fwd rel err':>13}{'fwd alone':>11}{'worst grad':>20}{'finite':>9}  result")
    failed = False
    for shape in shapes:
        r = check(shape, dtype, args.seed)
        worst = max(r["grads"], key=r["grads"].get)
        ok = r["finite"] and max(r["fwd"], r["fwd_alone"]) < fwd_tol and r["grads"][worst] < grad_tol
        failed |= not ok
        label = f"{shape.name} ({shape.rows},{shape.length},{shape.dim},{shape.d_state})"
        print(f"{label:<36}{r['fwd']:>13.2e}{r['fwd_alone']:>11.2e}{worst + ' ' + format(r['grads'][worst], '.2e'):>20}"
              f"{str(r['finite']):>9}  {'pass' if ok else 'FAIL'}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
