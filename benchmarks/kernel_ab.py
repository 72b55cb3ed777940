"""A change to the Pallas scan kernels against the code before it, interleaved in one process on one GPU.

    python benchmarks/kernel_ab.py export HEAD .data/base     # here: the revision's kernels as package base_kernels
    python benchmarks/kernel_ab.py run .data/base --shapes vmamba-64x64,mamba-768 --dtypes float32,bfloat16

``export`` writes ``git archive REV kernels/selective_scan`` to DIR/base_kernels/selective_scan with its imports
renamed, so both versions load side by side (carry DIR to the GPU machine with the working tree). ``run`` times the
default forward and forward+backward of both, ``impl="auto"``'s Pallas path as ``scan.py`` runs it, in interleaved
rounds of back-to-back batches (``scan_tune.interleaved_ms``): a slow spell of the machine lands in one round of
each, where separate calls on separate machines differed by more than the changes measured (NOTES.md, session 36).
It prints per shape and dtype the two medians, their ratio (below 1: the tree is faster), each forward over the copy
floor, and the largest difference between the two versions' y and gradients (``check_pallas.rel``, a norm ratio).
Without a GPU it runs the small shapes in interpret mode, one round of one call: a check of the wiring, not a timing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import tempfile

import jax
import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks.check_pallas import rel  # noqa: E402
from benchmarks.kernel_configs import kernel_fns  # noqa: E402
from benchmarks.rows import append_jsonl, extract_revision, select_shapes  # noqa: E402
from benchmarks.scan import (MODEL_SHAPES, SHAPES, SMALL_MODEL_SHAPES, SMALL_SHAPES, copy_bandwidth,  # noqa: E402
                             make_inputs, times_floor, warm_up)
from benchmarks.scan_tune import interleaved_ms  # noqa: E402

PACKAGE = "kernels/selective_scan"
BASE = "base_kernels"


def export(rev: str, out_dir: str) -> str:
    """Write revision ``rev``'s ``kernels/selective_scan`` to ``out_dir``/base_kernels/selective_scan, imports
    renamed to ``base_kernels.selective_scan``; returns the package's path. Exits naming a revision git lacks."""
    target = os.path.join(out_dir, BASE, "selective_scan")
    with tempfile.TemporaryDirectory() as tmp:
        extract_revision(rev, [PACKAGE], tmp, "kernel_ab.py")
        os.makedirs(target, exist_ok=True)
        for name in os.listdir(os.path.join(tmp, PACKAGE)):
            with open(os.path.join(tmp, PACKAGE, name), encoding="utf-8") as f:
                text = f.read()
            if name.endswith(".py"):
                text = re.sub(r"\bkernels\.selective_scan\b", f"{BASE}.selective_scan", text)
            with open(os.path.join(target, name), "w", encoding="utf-8") as f:
                f.write(text)
    open(os.path.join(out_dir, BASE, "__init__.py"), "w").close()
    return target


def load_base(base_dir: str):
    """The exported package's ``ops`` module (``export``'s ``out_dir``)."""
    if not os.path.isdir(os.path.join(base_dir, BASE, "selective_scan")):
        raise SystemExit(f"kernel_ab.py: {base_dir} has no {BASE}/selective_scan: run kernel_ab.py export REV "
                         f"{base_dir} first (on the machine with the git checkout) and carry {base_dir}")
    for name in [n for n in sys.modules if n == BASE or n.startswith(BASE + ".")]:
        del sys.modules[name]  # an export loaded earlier in this process, maybe from another DIR
    sys.path.insert(0, os.path.abspath(base_dir))
    return importlib.import_module(f"{BASE}.selective_scan.ops")


def largest_difference(base, new) -> float:
    """The largest ``check_pallas.rel`` of ``new`` against ``base`` over their leaves (y, or every gradient)."""
    return max(rel(b, a) for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(new)))


def compare(base_ops, new_ops, shape, dtype, *, rounds: int, calls: int, bandwidth: float, interpret: bool) -> dict:
    """One shape and dtype: both versions checked against each other, then timed interleaved (times in us)."""
    args, cotangent = make_inputs(shape, jnp.dtype(dtype))
    (base_f, base_fb), (new_f, new_fb) = (kernel_fns({}, scan=ops.selective_scan_pallas, interpret=interpret,
                                                     **shape.scan_kwargs())
                                          for ops in (base_ops, new_ops))
    for fn in (base_f, new_f):
        warm_up(fn, *args, calls=1, seconds=0.0 if interpret else 1.0)
    for fn in (base_fb, new_fb):
        warm_up(fn, args, cotangent, calls=1, seconds=0.0 if interpret else 1.0)
    row = {"shape": shape.name, "dtype": dtype, "y_diff": largest_difference(base_f(*args), new_f(*args)),
           "grad_diff": largest_difference(base_fb(args, cotangent)[1], new_fb(args, cotangent)[1])}
    fwd = interleaved_ms([base_f, new_f], args, calls=calls, rounds=rounds)
    fwd_bwd = interleaved_ms([base_fb, new_fb], (args, cotangent), calls=calls, rounds=rounds)
    row.update(base_fwd_us=1e3 * fwd[0], new_fwd_us=1e3 * fwd[1], base_fwd_bwd_us=1e3 * fwd_bwd[0],
               new_fwd_bwd_us=1e3 * fwd_bwd[1], fwd_ratio=fwd[1] / fwd[0], fwd_bwd_ratio=fwd_bwd[1] / fwd_bwd[0],
               base_floor=times_floor(fwd[0] / 1e3, shape, dtype, bandwidth),
               new_floor=times_floor(fwd[1] / 1e3, shape, dtype, bandwidth))
    return row


def print_row(row: dict) -> None:
    print(f"{row['shape']:<14}{row['dtype']:<10}{row['base_fwd_us']:10.1f}{row['new_fwd_us']:10.1f}"
          f"{row['fwd_ratio']:8.3f}{row['base_floor']:8.2f}{row['new_floor']:8.2f}{row['base_fwd_bwd_us']:11.1f}"
          f"{row['new_fwd_bwd_us']:11.1f}{row['fwd_bwd_ratio']:8.3f}{row['y_diff']:10.1e}{row['grad_diff']:10.1e}",
          flush=True)


def run(args) -> list[dict]:
    on_gpu = jax.default_backend() == "gpu"
    base_ops = load_base(args.base)
    new_ops = importlib.import_module("kernels.selective_scan.ops")
    shapes = select_shapes((*SHAPES, *MODEL_SHAPES) if on_gpu else (*SMALL_SHAPES, *SMALL_MODEL_SHAPES), args.shapes,
                           default=SHAPES if on_gpu else SMALL_SHAPES[-1:])
    bandwidth = copy_bandwidth(2**30 if on_gpu else 2**24, repeats=5)
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s" + ("" if on_gpu else "; no GPU: interpret mode, not a timing"))
    print(f"{'shape':<14}{'dtype':<10}{'base fwd':>10}{'new fwd':>10}{'ratio':>8}{'base x':>8}{'new x':>8}"
          f"{'base f+b':>11}{'new f+b':>11}{'ratio':>8}{'y diff':>10}{'grad diff':>10}   (us; x: over the floor)")
    rows = []
    for dtype in args.dtypes.split(","):
        for shape in shapes:
            row = compare(base_ops, new_ops, shape, dtype, rounds=args.rounds if on_gpu else 1,
                          calls=args.calls if on_gpu else 1, bandwidth=bandwidth, interpret=not on_gpu)
            print_row(row)
            append_jsonl(args.json, row)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    ex = sub.add_parser("export", help="a git revision's kernels as the package base_kernels under DIR")
    ex.add_argument("rev")
    ex.add_argument("dir")
    go = sub.add_parser("run", help="time the working tree's kernels against the exported ones")
    go.add_argument("base", help="the DIR given to export")
    go.add_argument("--shapes", help="comma-separated shape names (GPU default: the five generic ones of scan.py; "
                                     "its model shapes by name)")
    go.add_argument("--dtypes", default="float32")
    go.add_argument("--rounds", type=int, default=7)
    go.add_argument("--calls", type=int, default=50)
    go.add_argument("--json", help="append each row to this JSON-lines file")
    args = parser.parse_args()
    if args.mode == "export":
        print(json.dumps({"exported": export(args.rev, args.dir)}))
    else:
        run(args)


if __name__ == "__main__":
    main()
