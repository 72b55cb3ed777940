"""mamba_ssm's CUDA selective scan timed the way ``benchmarks/scan.py`` times ours, on its five generic shapes.

    python benchmarks/mamba_ssm_times.py --peer peer/mamba_ssm --dtype bfloat16   # GPU: one JSON line per shape

``scan.py --peer`` runs it in a child process, so mamba_ssm never shares a GPU process with JAX (this script imports JAX
for the shape table only and touches no JAX device). ``--peer`` is a copy of ``../shared/peer/mamba_ssm``: its
``build.py`` builds (or loads) the CUDA extension and its ``mamba_ssm`` package holds ``selective_scan_fn``; none of it
is part of this project. Inputs are drawn as ``scan.make_inputs`` draws ours (same shapes and scales), in mamba_ssm's
layout (u, delta, z as (rows, D, L); B, C as (rows, 1, N, L); D, z, delta_bias and softplus on). Per shape, for the
forward and the forward+backward (``torch.autograd.grad`` of all eight inputs), after ``--warmup_s`` seconds of calls:
``single`` is the median host wall time of one call from a synchronised start to its synchronised end, launch latency
included, as ``scan.median_time`` times ours; ``batched`` is the median per-call time of ``--calls`` calls issued back
to back and synchronised once, as ``scan.batched_time`` times ours: the GPU's own rate while the host keeps ahead, as in
training. (The peer's ``bench.py`` times one call between CUDA events, which leaves out the launch latency that the host
wall clock ours is timed by includes.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.scan import SHAPES  # noqa: E402  (imports JAX, which touches no device unless asked)


def peer_inputs(rows: int, length: int, dim: int, d_state: int, dtype, device, seed: int = 0):
    """The eight scan inputs in mamba_ssm's layout (each requiring grad) and a cotangent for y."""
    g = torch.Generator(device=device).manual_seed(seed)
    normal = lambda *shape, scale=1.0: (scale * torch.randn(*shape, device=device, generator=g)).to(dtype)
    bdl, bnl = (rows, dim, length), (rows, 1, d_state, length)
    args = [normal(*bdl), normal(*bdl, scale=0.5), -torch.exp(torch.randn(dim, d_state, device=device, generator=g)),
            normal(*bnl), normal(*bnl), torch.randn(dim, device=device, generator=g), normal(*bdl),
            torch.randn(dim, device=device, generator=g)]
    return [a.detach().requires_grad_(True) for a in args], normal(*bdl)


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def single_s(fn, device, repeats: int) -> float:
    """Median wall time in seconds of one synchronised call of ``fn``."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def batched_s(fn, device, calls: int, repeats: int) -> float:
    """Median over ``repeats`` batches of the per-call wall time of ``calls`` back-to-back calls of ``fn``."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) / calls)
    return float(np.median(times))


def warm_up(fn, device, seconds: float) -> None:
    """Call ``fn`` once, then again for ``seconds`` counted from the end of that first call."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
    synchronize(device)


def time_shape(scan_fn, shape, dtype, device, repeats: int, calls: int, warmup_s: float) -> dict:
    """One JSON row: ``scan_fn``'s forward and forward+backward times on ``shape`` (a ``benchmarks.scan.Shape``),
    single and batched, in seconds."""
    args, dy = peer_inputs(shape.rows, shape.length, shape.dim, shape.d_state, dtype, device)
    forward = lambda: scan_fn(*args, delta_softplus=True)
    forward_backward = lambda: torch.autograd.grad(scan_fn(*args, delta_softplus=True), args, dy)
    row = {"shape": shape.name, "dtype": str(dtype).split(".")[-1]}
    for key, fn in (("fwd", forward), ("fwd_bwd", forward_backward)):
        warm_up(fn, device, warmup_s)
        row[f"{key}_single"] = single_s(fn, device, repeats)
        row[f"{key}_batched"] = batched_s(fn, device, calls, repeats)
    return row


def load_peer(peer_dir: str):
    """``selective_scan_fn`` of the peer copy, its CUDA extension built or loaded by the copy's ``build.py``."""
    if not os.path.isfile(os.path.join(peer_dir, "build.py")):
        raise SystemExit(f"--peer {peer_dir}: expected a copy of ../shared/peer/mamba_ssm (build.py, mamba_ssm/)")
    sys.path.insert(0, os.path.abspath(peer_dir))
    from build import build

    sys.modules["selective_scan_cuda"] = build()
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    return selective_scan_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", required=True, help="a copy of ../shared/peer/mamba_ssm")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--calls", type=int, default=50, help="calls per back-to-back batch (scan.BATCH_CALLS)")
    parser.add_argument("--warmup_s", type=float, default=2.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("mamba_ssm_times.py times mamba_ssm's CUDA kernel; no CUDA device here")
    scan_fn = load_peer(args.peer)
    for shape in SHAPES:
        torch.cuda.empty_cache()
        row = time_shape(scan_fn, shape, getattr(torch, args.dtype), "cuda", args.repeats, args.calls, args.warmup_s)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
