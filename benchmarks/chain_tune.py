"""The split design's chain kernel (``kernels/selective_scan/chain.py``) alone, for several channel widths a program
and segment groups, on the real segment summaries of the scan benchmark shapes: a check here, GPU time under ncu.

    ncu --clock-control none --metrics gpu__time_duration.sum --csv --kernel-name regex:^chain__ \\
        python benchmarks/chain_tune.py run --configs 16/8,4/16,2/32 > chain.csv
    python benchmarks/chain_tune.py summary chain.csv --configs 16/8,4/16,2/32
    python benchmarks/chain_tune.py run --small      # CPU: interpret mode, the check only

A config is ``block_d/unroll[/warps]``: at most ``block_d`` channels a program (each with all N states), ``unroll``
segments loaded together a group ahead, ``warps`` a program (1 by default); the first is the reference (by default
the kernel's defaults). Per shape (those of ``scan.py``'s generic and model shapes that the auto design cuts into
segments, ``scan_parts.segmented``), ``run`` chains the forward summaries (``summaries.states`` on
``scan_parts.setup``) forward from zero (``forward``, as the forward pass does) and in reverse from a random state
(``reverse``, as the backward's adjoint chain does) under every config, prints the worst relative error of the
entering and leaving states against the first config's, then launches each kernel ``--calls`` times. Each
(shape, direction, config) kernel carries its own name, ``chain__<shape>__<direction>__<config>``, so ncu's
per-launch GPU time says whose it is; ``summary`` prints their medians and the ratio to the first config. A chain is
a few microseconds, less than the host takes to dispatch a call, so timing it from the host measures the dispatch
(session 35, NOTES.md).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.check_pallas import rel  # noqa: E402
from benchmarks.rows import select_shapes  # noqa: E402
from benchmarks.scan import MODEL_SHAPES, SHAPES, SMALL_SHAPES  # noqa: E402
from benchmarks.scan_kernel_times import kernel_times  # noqa: E402
from benchmarks.scan_parts import segmented, setup  # noqa: E402
from kernels.selective_scan import chain  # noqa: E402
from kernels.selective_scan import summaries as summary_kernel  # noqa: E402

DIRECTIONS = ("forward", "reverse")


def parse_config(text: str) -> dict:
    """``block_d/unroll[/warps]`` -> ``chain.chain`` keywords."""
    fields = text.split("/")
    if len(fields) not in (2, 3) or not all(f.isdigit() for f in fields):
        raise SystemExit(f"chain config {text!r}: expected block_d/unroll[/warps], e.g. 16/8 or 2/32/1")
    block_d, unroll, *warps = (int(f) for f in fields)
    return dict(block_d=block_d, unroll=unroll, num_warps=warps[0] if warps else 1)


def _identifier(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", part)


def kernel_name(shape: str, direction: str, config: str) -> str:
    """The kernel's name for ncu: ``chain__<shape>__<direction>__<config>``, each part in letters, digits and _."""
    return "__".join(["chain"] + [_identifier(part) for part in (shape, direction, config)])


def chain_fn(lay, config: dict, reverse: bool, name: str, interpret: bool):
    """Jitted: the chain of (total, dsum, A, start) under one config, as a kernel called ``name``; the forward
    direction starts from zero."""
    def run(total, dsum, A, start):
        return chain.chain(total, dsum, A, lay, reverse=reverse, start=start if reverse else None,
                           interpret=interpret, name=name, **config)
    return jax.jit(run)


def summaries(shape, interpret: bool):
    """(forward layout, A, start, total, dsum): the forward segment summaries of this shape's benchmark inputs (delta
    discretised first, as the differentiated float32 default does), and a random state entering the last segment
    for the reverse chain. Only the summary kernel runs, so that a short lease spends its time on the chains."""
    prepared = setup(shape, jnp.float32, interpret)
    inputs = jax.jit(prepared.discretise)(prepared.given)
    total, dsum = jax.jit(lambda x: summary_kernel.states(x, prepared.lay, **prepared.fwd_kw))(inputs)
    start = jnp.asarray(np.random.default_rng(0).normal(size=(total.shape[0], *total.shape[2:])), jnp.float32)
    return prepared.lay, inputs["A"], start, total, dsum


def run_shape(shape, configs: list[str], calls: int, interpret: bool) -> list[dict]:
    """One row per (direction, config) with its check against the first config; each kernel launched ``calls``
    times more, waited for, for ncu to time."""
    lay, A, start, total, dsum = summaries(shape, interpret)
    rows = []
    for direction in DIRECTIONS:
        reverse = direction == "reverse"
        reference = None
        for text in configs:
            name = kernel_name(shape.name, direction, text)
            fn = chain_fn(lay, parse_config(text), reverse, name, interpret)
            out = jax.block_until_ready(fn(total, dsum, A, start))
            reference = out if reference is None else reference
            for _ in range(calls):
                jax.block_until_ready(fn(total, dsum, A, start))
            rows.append({"shape": shape.name, "direction": direction, "config": text, "segments": lay.n_segments,
                         "kernel": name, "check": max(rel(x, r) for x, r in zip(out, reference))})
    return rows


def summary(path: str, shapes, configs: list[str]) -> list[dict]:
    """Median GPU us of each (shape, direction, config) kernel in ncu's CSV, and its ratio to the first config's;
    ``shapes`` None: every shape with a kernel in the CSV."""
    times = kernel_times(path)
    if shapes is None:
        shapes = [s for s in (*SHAPES, *MODEL_SHAPES, *SMALL_SHAPES)
                  if any(name.startswith(f"chain__{_identifier(s.name)}__") for name in times)]
    rows = []
    for shape in shapes:
        for direction in DIRECTIONS:
            first = None
            for text in configs:
                launches = times.get(kernel_name(shape.name, direction, text))
                if not launches:
                    raise SystemExit(f"{path}: no launch of {kernel_name(shape.name, direction, text)}; was it "
                                     f"written by ncu over `chain_tune.py run` with these --configs and shapes?")
                us = statistics.median(launches)
                first = us if first is None else first
                rows.append({"shape": shape.name, "direction": direction, "config": text, "us": us,
                             "launches": len(launches), "ratio": us / first})
    return rows


def main() -> None:
    on_gpu = jax.default_backend() == "gpu"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("run", "summary"))
    parser.add_argument("csv", nargs="?", help="summary: ncu's CSV of a run")
    default = f"{chain.BLOCK_D}/{chain.UNROLL}"
    others = [c for c in ("16/8", "8/16", "4/16", "4/32", "2/16") if c != default]
    parser.add_argument("--configs", default=",".join([default, *others]),
                        help="comma-separated block_d/unroll[/warps]; the first is the reference")
    parser.add_argument("--shapes", help="comma-separated shape names (default: run, every benchmark and model shape "
                        "the auto design segments; summary, every shape in the CSV)")
    parser.add_argument("--small", action=argparse.BooleanOptionalAction, default=not on_gpu,
                        help="shrunken shapes in interpret mode (default when no GPU)")
    parser.add_argument("--calls", type=int, default=5, help="run: launches of each kernel after the check's")
    args = parser.parse_args()
    configs = args.configs.split(",")
    for text in configs:
        parse_config(text)
    if len(set(configs)) < len(configs):
        raise SystemExit(f"--configs {args.configs}: a config named twice would share its kernels' name")
    if args.mode == "summary":
        if not args.csv:
            raise SystemExit("summary needs the ncu CSV: python benchmarks/chain_tune.py summary chain.csv")
        if not os.path.isfile(args.csv):
            raise SystemExit(f"{args.csv}: no such file; expected ncu's CSV of `chain_tune.py run` (see --help)")
        shapes = None if args.shapes is None else select_shapes((*SHAPES, *MODEL_SHAPES, *SMALL_SHAPES), args.shapes)
        print(f"{'shape':<16}{'direction':<10}{'config':<10}{'us':>9}{'x first':>9}{'launches':>10}")
        for row in summary(args.csv, shapes, configs):
            print(f"{row['shape']:<16}{row['direction']:<10}{row['config']:<10}{row['us']:9.2f}{row['ratio']:9.2f}"
                  f"{row['launches']:10d}")
        return
    candidates = SMALL_SHAPES if args.small else (*SHAPES, *MODEL_SHAPES)
    shapes = select_shapes([s for s in candidates if segmented(s)], args.shapes)
    print(f"# {jax.devices()[0].device_kind} ({jax.default_backend()}), chain kernel, check against {configs[0]}",
          flush=True)
    print(f"{'shape':<16}{'segments':>9}  {'direction':<10}{'config':<10}{'check':>10}", flush=True)
    for shape in shapes:
        for row in run_shape(shape, configs, args.calls, not on_gpu):
            print(f"{row['shape']:<16}{row['segments']:>9}  {row['direction']:<10}{row['config']:<10}"
                  f"{row['check']:10.1e}", flush=True)


if __name__ == "__main__":
    main()
