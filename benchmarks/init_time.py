"""Seconds to initialise MemoryMamba's parameters, with JAX's two lowerings of its random bits, and whether they agree.

    python benchmarks/init_time.py                               # GPU: tiny at 224 px, each lowering twice
    python benchmarks/init_time.py --sizes tiny small --rounds 1
    python benchmarks/init_time.py --image-size 32 --rounds 1    # CPU: both rows take the same lowering there

A training run that starts fresh initialises its parameters first (``training.state.init_variables``: the model's
``init`` lowered, compiled and run). What that compiles is mostly the threefry random bits of every parameter (on
this project's CPU XLA removed the forward pass from the program: no dot or convolution was left), which JAX lowers
by default as unrolled rounds of 32-bit arithmetic; ``jax_threefry_gpu_kernel_lowering`` lowers each draw to one call
of a CUDA kernel instead, the same function. ``init_variables`` takes the kernel since session 59, after this script
read on a lent H100 (2026-12-06, tiny, one round): unrolled 105.1 s, kernel 19.2 s, the same parameters to the bit.
Each row is ``init_variables`` in a fresh process (no compilation cache), alternating "unrolled"
(``threefry_kernel=False``, JAX's default) and "kernel" ``--rounds`` times; the table gives the seconds per run, the
median per lowering, and whether every run gave the same parameters, bit for bit (a SHA-256 of all of them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import types

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.train_throughput import bench_config  # noqa: E402
from ssm_jax.training.run import build_model  # noqa: E402
from ssm_jax.training.state import init_variables  # noqa: E402

LOWERINGS = {"unrolled": False, "kernel": True}  # -> init_variables(threefry_kernel=...)


def digest(tree) -> str:
    """SHA-256 of every leaf's bytes, in the tree's order: equal digests, equal parameters to the bit."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()


def measure(size: str, image_size: int, lowering: str) -> dict:
    """``init_variables`` of MemoryMamba ``size`` with the threefry ``lowering``: seconds, parameter count, digest."""
    args = types.SimpleNamespace(image_size=image_size, scan_impl="auto", dtype="float32", memory="on")
    model = build_model(bench_config(size, args))
    start = time.perf_counter()
    variables = jax.block_until_ready(init_variables(model, jax.random.PRNGKey(0), image_size,
                                                      threefry_kernel=LOWERINGS[lowering]))
    seconds = time.perf_counter() - start
    params = sum(leaf.size for leaf in jax.tree.leaves(variables))
    return {"size": size, "lowering": lowering, "seconds": seconds, "params": params, "digest": digest(variables)}


def run_child(size: str, image_size: int, lowering: str) -> dict:
    """``measure`` in a process of its own, with no persistent compilation cache: each run compiles from scratch."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", f"{size}:{lowering}",
                           "--image-size", str(image_size)], capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"init_time.py: the {lowering} run of {size} failed (exit {done.returncode}): "
                         f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(lines[-1])


def summary(rows: list[dict]) -> tuple[list[str], bool]:
    """Per size: each lowering's runs and median seconds, the ratio kernel / unrolled, and whether all its runs gave
    the same parameters; and whether every size's did."""
    lines, all_same = [], True
    for size in dict.fromkeys(r["size"] for r in rows):
        mine = [r for r in rows if r["size"] == size]
        medians = {}
        for lowering in LOWERINGS:
            seconds = [r["seconds"] for r in mine if r["lowering"] == lowering]
            if seconds:
                medians[lowering] = statistics.median(seconds)
                runs = ", ".join(f"{s:.1f}" for s in seconds)
                lines.append(f"{size:<7}{lowering:<10}{medians[lowering]:>10.1f}  ({runs})")
        if len(medians) == 2:
            lines.append(f"{size:<7}kernel / unrolled {medians['kernel'] / medians['unrolled']:.2f}")
        same = len({r["digest"] for r in mine}) == 1
        all_same &= same
        lines.append(f"{size:<7}same parameters in every run: {'yes' if same else 'NO'} ({mine[0]['params']:,})")
    return lines, all_same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", metavar="SIZE:LOWERING", help=argparse.SUPPRESS)  # a child's single measurement
    args = parser.parse_args()
    if args.one:
        size, lowering = args.one.split(":")
        print(json.dumps(measure(size, args.image_size, lowering)), flush=True)
        return
    rows = []
    for size in args.sizes:
        for round_ in range(args.rounds):
            for lowering in LOWERINGS:
                rows.append(run_child(size, args.image_size, lowering))
                print(f"round {round_ + 1}  {size:<7}{lowering:<10}{rows[-1]['seconds']:8.1f} s", flush=True)
    lines, all_same = summary(rows)
    print(f"\n{'size':<7}{'lowering':<10}{'median s':>10}  (runs)")
    print("\n".join(lines))
    sys.exit(0 if all_same else 1)


if __name__ == "__main__":
    main()
