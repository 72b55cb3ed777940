"""Time the selective-scan implementations against each other and against the HBM floor.

    python benchmarks/scan.py            # GPU: full shapes, all impls, each (impl, shape) in its own process
    python benchmarks/scan.py --small    # CPU default: shrunken shapes, pallas skipped (interpret mode is no timing)
    python benchmarks/scan.py --no-small --shapes vmamba-64x64 --repeats 3   # one full-size shape on CPU
    python benchmarks/scan.py --impls pallas --peer peer/mamba_ssm   # GPU: and mamba_ssm's CUDA kernel beside it
    python benchmarks/scan.py --impls pallas --pallas-configs split:16:0:1:1:4::::1 --peer peer/mamba_ssm

Prints one row per impl x shape, each as soon as it is measured: forward and forward+backward time, one call at a
time (median of repeats after warm-up calls, at least ``WARMUP_S`` seconds of them on GPU; each call pays the host's
dispatch latency) and back to back (``b2b``: per call, median of repeats of ``BATCH_CALLS`` calls issued without
waiting, the device's own rate as in training), peak memory, and for the back-to-back forward the floor = bytes it
must move / copy bandwidth measured in this run, the achieved GB/s (floor bytes / forward time) and time / floor.
Peak memory is the device's peak_bytes_in_use on GPU before the back-to-back batches (one process per row, so rows
don't see each other's peaks) and the compiled fwd+bwd temp size on CPU.
The copy bandwidth is that of a plain device-to-device copy, warmed up and timed back to back like the kernels.
With ``--peer DIR`` (a copy of ``../shared/peer/mamba_ssm``; it builds mamba_ssm's CUDA kernel, about 2 minutes)
the same call then times mamba_ssm on the same shapes and dtype both ways with the same host clock
(``benchmarks/mamba_ssm_times.py``) and adds the ratios ours / mamba_ssm (below 1: ours is faster), mamba_ssm's
back-to-back forward over the same floor, and issue 9's second target per row (``floor_target``: ours within 3x of
the floor where mamba_ssm is within 10x).
``--pallas-configs`` adds a row per shape for each Pallas kernel config given (``benchmarks/scan_tune.py``'s
format), labelled ``pallas:<config>``, so candidate defaults get their ratios in the same call as the default.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import NamedTuple

# Allocate on demand: on GPU the rows run in child processes, and a parent (or a previous row) holding a
# preallocated pool would starve them.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.kernel_configs import kernel_fns, parse_config  # noqa: E402
from benchmarks.rows import select_shapes  # noqa: E402
from ssm_jax.ssm import scan_orders, selective_scan  # noqa: E402

IMPLS = ("pallas", "associative", "chunked", "sequential")
# Seconds of warm-up calls per timing on GPU: each row runs in a fresh process, and on 2026-11-30 the first timing
# of a process ran up to 1.5x slow (kernels/selective_scan/NOTES.md).
WARMUP_S = 2.0
# Calls per back-to-back batch (``batched_time``). A batch also pays one dispatch latency and one final wait, which
# a per-call time spreads over its calls: on one H200 (2026-12-02, bf16 vmamba-64x64 forward, NOTES.md "Session
# 25") that fixed part was about 111 us for ours (JAX) and 55 us for mamba_ssm (PyTorch), so 10 calls a batch put
# ours at 130 us a call and 50 calls at 121, against a rate of 119 us from the two; mamba_ssm 124, 120 and 119.
BATCH_CALLS = 50


class Shape(NamedTuple):
    name: str
    batch: int
    length: int
    dim: int
    d_state: int
    directions: int = 1
    in_place: int = 0  # K > 0: a square map of `length` positions scanned in place along K `method` orders, as
    # SS2D runs with fused directions: `dim` holds the K directions' channels, B/C come in K groups, no gate z, and
    # u and y hold one direction's channels (``u_dim``: u shared by the groups, y summed over them)
    method: str = "sweep"

    @property
    def rows(self) -> int:
        """Sequences in the scan: directions are stacked on batch."""
        return self.batch * self.directions

    @property
    def groups(self) -> int:
        return self.in_place or 1

    @property
    def u_dim(self) -> int:
        """Channels of u and y: in place, one direction's, u shared by the K groups and y summed over them
        (``selective_scan(sum_groups=True)``, as SS2D scans); otherwise ``dim``."""
        return self.dim // self.groups

    def scan_kwargs(self) -> dict:
        """``selective_scan``'s keywords for this shape besides its arrays: in place, the orders and the sum of y."""
        return dict(order=self.order(), sum_groups=bool(self.in_place))

    def order(self):
        """(K, L) scan orders of an in-place shape (``selective_scan(order=)``), else None."""
        if not self.in_place:
            return None
        side = math.isqrt(self.length)
        return jnp.asarray(scan_orders(self.method, side, side, self.in_place))


SHAPES = (
    Shape("vim-s", 32, 3136, 384, 16),
    Shape("mamba-768", 8, 4096, 768, 16),
    Shape("8-dir", 64, 1024, 192, 16, 8),
    Shape("long", 2, 16384, 768, 16),
    Shape("vmamba-64x64", 8, 64 * 64, 192, 16),
)
# What the models' training steps scan, beside the generic shapes above, all in place: MemoryMamba-tiny's four stages
# at 224 px, batch 64 (d_inner 192..1536 x 4 sweep directions), and MambaAD's four decoder stages at 256 px, batch 16
# (d_inner 128..1024 x 8 Hilbert directions).
MODEL_SHAPES = (
    Shape("mm-tiny-56", 64, 56 * 56, 4 * 192, 16, in_place=4),
    Shape("mm-tiny-28", 64, 28 * 28, 4 * 384, 16, in_place=4),
    Shape("mm-tiny-14", 64, 14 * 14, 4 * 768, 16, in_place=4),
    Shape("mm-tiny-7", 64, 7 * 7, 4 * 1536, 16, in_place=4),
    Shape("ad-64", 16, 64 * 64, 8 * 128, 16, in_place=8, method="hilbert"),
    Shape("ad-32", 16, 32 * 32, 8 * 256, 16, in_place=8, method="hilbert"),
    Shape("ad-16", 16, 16 * 16, 8 * 512, 16, in_place=8, method="hilbert"),
    Shape("ad-8", 16, 8 * 8, 8 * 1024, 16, in_place=8, method="hilbert"),
)
SMALL_SHAPES = (
    Shape("vim-s/small", 2, 256, 64, 16),
    Shape("mamba-768/small", 1, 512, 128, 16),
    Shape("8-dir/small", 2, 128, 32, 16, 8),
    Shape("long/small", 1, 2048, 32, 16),
    Shape("vmamba/small", 1, 16 * 16, 96, 16),
)
SMALL_MODEL_SHAPES = (Shape("mm-tiny/small", 1, 8 * 8, 4 * 16, 16, in_place=4),)


def make_inputs(shape: Shape, dtype, seed: int = 0):
    """A Mamba layer's scan inputs (D, gate z unless in place, delta_bias; softplus is on), random and non-zero, and
    a cotangent of y; in place, u and y have ``shape.u_dim`` channels."""
    k = jax.random.split(jax.random.PRNGKey(seed), 9)
    bld = (shape.rows, shape.length, shape.dim)
    bl_u = (shape.rows, shape.length, shape.u_dim)
    bc = (shape.rows, shape.length, shape.groups, shape.d_state)
    normal = lambda key, s, scale=1.0: (scale * jax.random.normal(key, s)).astype(dtype)
    args = (normal(k[0], bl_u), normal(k[1], bld, 0.5), -jnp.exp(jax.random.normal(k[2], (shape.dim, shape.d_state))),
            normal(k[3], bc), normal(k[4], bc), jax.random.normal(k[5], (shape.dim,)),
            None if shape.in_place else normal(k[6], bld), jax.random.normal(k[7], (shape.dim,)))
    return args, normal(k[8], bl_u)


def forward_bytes(shape: Shape, dtype) -> int:
    """Fewest bytes the forward moves: u, delta, z (when gated), B, C, A, D, delta_bias read once, y written once
    (in place, u and y one direction wide)."""
    item = jnp.dtype(dtype).itemsize
    act = shape.rows * shape.length * shape.dim * item
    u_or_y = shape.rows * shape.length * shape.u_dim * item
    bc = shape.rows * shape.length * shape.groups * shape.d_state * item
    params = shape.dim * shape.d_state * 4 + 2 * shape.dim * 4
    return (1 if shape.in_place else 2) * act + 2 * u_or_y + 2 * bc + params


def times_floor(seconds: float, shape: Shape, dtype, bandwidth: float) -> float:
    """A forward's time over its copy floor: ``forward_bytes`` moved at ``bandwidth`` bytes/s (issue 9's second
    target asks for at most 3)."""
    return seconds / (forward_bytes(shape, dtype) / bandwidth)


def floor_target(ours: float, peer: float) -> str:
    """Issue 9's second target on one shape from the two forwards over their copy floor (``times_floor``): "met" or
    "missed" (ours within 3x or not) where mamba_ssm's is within 10x, "out of scope" where it is not."""
    if peer > 10:
        return "out of scope"
    return "met" if ours <= 3 else "missed"


def warm_up(fn, *args, calls: int, seconds: float) -> None:
    """Call ``fn(*args)`` at least ``calls`` times and for ``seconds`` after the first call, so the GPU is at its
    working clocks when timing starts. The seconds count from the end of the first call, which compiles: counted
    from its start, a long compile used them up while the GPU idled (session 12: the first config timed on
    mamba-768, vmamba-64x64 and mm-tiny-56 ran its forward+backward 3-4x slower than the same config later)."""
    jax.block_until_ready(fn(*args))
    start, done = time.perf_counter(), 1
    while done < calls or time.perf_counter() - start < seconds:
        jax.block_until_ready(fn(*args))
        done += 1


def median_time(fn, *args, repeats: int, warmup_s: float = 0.0) -> float:
    """Median wall time in seconds of ``fn(*args)`` after ``warm_up`` (two calls, and ``warmup_s`` seconds)."""
    warm_up(fn, *args, calls=2, seconds=warmup_s)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def batched_time(fn, *args, calls: int, repeats: int) -> float:
    """Median over ``repeats`` batches of the per-call wall time in seconds of ``calls`` calls of ``fn(*args)``
    issued back to back and waited for once: the device's own rate while the host keeps ahead, as in training
    (``median_time`` pays the dispatch latency on every call). Each call's output is dropped when the next is
    issued (freed once computed), so memory stays that of two calls; waiting for the last waits for all, since
    they run in order. Call after ``warm_up``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = None
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / calls)
    return float(np.median(times))


def copy_bandwidth(n_bytes: int, repeats: int) -> float:
    """Device-to-device copy bandwidth in bytes/s, read + write counted, timed as the kernels' back-to-back rows are:
    after ``warm_up`` (working clocks) and in batches of 10 (``batched_time``). Timed one synchronised copy at a time
    from a cold start, as until session 36, one day's fresh machines read 2,470-3,088 GB/s."""
    x = jnp.arange(n_bytes // 4, dtype=jnp.float32)
    step = jax.jit(lambda a: jnp.copy(a))
    warm_up(step, x, calls=3, seconds=1.0)
    return 2 * x.nbytes / batched_time(step, x, calls=10, repeats=repeats)


def peer_times(peer_dir: str, dtype, repeats: int) -> dict:
    """{shape name: row} of mamba_ssm's kernel timed as ours is (``benchmarks/mamba_ssm_times.py``, a child
    process): ``fwd``/``fwd_bwd`` one call each (``median_time``), ``*_batched`` back to back (``batched_time``)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mamba_ssm_times.py")
    cmd = [sys.executable, script, "--peer", peer_dir, "--dtype", jnp.dtype(dtype).name, "--repeats", str(repeats),
           "--calls", str(BATCH_CALLS), "--warmup_s", str(WARMUP_S)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not rows:
        raise SystemExit(f"--peer: {' '.join(cmd)} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return {r["shape"]: {"fwd": r["fwd_single"], "fwd_bwd": r["fwd_bwd_single"], "fwd_batched": r["fwd_batched"],
                         "fwd_bwd_batched": r["fwd_bwd_batched"]} for r in rows}


def functions(impl: str, order=None, sum_groups: bool = False):
    """Jitted forward and forward+backward of an impl, or of ``pallas:<config>`` (a scan_tune config)."""
    if impl.startswith("pallas:"):
        return kernel_fns(parse_config(impl.split(":", 1)[1]), order, sum_groups=sum_groups)

    def forward(*args):
        return selective_scan(*args, delta_softplus=True, impl=impl, order=order, sum_groups=sum_groups)

    def forward_backward(args, cotangent):
        y, vjp = jax.vjp(forward, *args)
        return y, vjp(cotangent)

    return jax.jit(forward), jax.jit(forward_backward)


def measure(impl: str, shape: Shape, dtype, repeats: int) -> dict:
    """Forward and fwd+bwd time (s) and peak memory (bytes, or None) of one impl on one shape."""
    args, cotangent = make_inputs(shape, dtype)
    forward, forward_backward = functions(impl, **shape.scan_kwargs())
    on_gpu = jax.default_backend() == "gpu"
    warmup_s = WARMUP_S if on_gpu else 0.0
    row = {"fwd": median_time(forward, *args, repeats=repeats, warmup_s=warmup_s)}
    row["fwd_bwd"] = median_time(forward_backward, args, cotangent, repeats=repeats, warmup_s=warmup_s)
    if on_gpu:  # read before the back-to-back batches
        row["peak"] = jax.devices()[0].memory_stats()["peak_bytes_in_use"]
    else:
        analysis = forward_backward.lower(args, cotangent).compile().memory_analysis()
        row["peak"] = getattr(analysis, "temp_size_in_bytes", None)
    row["fwd_batched"] = batched_time(forward, *args, calls=BATCH_CALLS, repeats=repeats)
    row["fwd_bwd_batched"] = batched_time(forward_backward, args, cotangent, calls=BATCH_CALLS, repeats=repeats)
    return row


def isolated(job: str, args) -> dict:
    """Run ``--one job`` (``impl@shape`` or ``bandwidth``) in a fresh process: the device's peak memory is
    then this job's alone, and the parent holds no device memory."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", job, "--dtype", args.dtype,
           "--repeats", str(args.repeats)] + (["--small"] if args.small else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": "OOM" if "RESOURCE_EXHAUSTED" in done.stderr else tail[:60]}
    return json.loads(lines[-1])


def fmt_ms(seconds) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:10.3f}"


def fmt_bytes(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:9.1f} MiB"


def print_peer_ratios(rows, peer: dict, bandwidth: float, dtype) -> None:
    """ours / mamba_ssm per shape, mamba_ssm's back-to-back forward over the copy floor, and issue 9's second target
    read from both (``floor_target``)."""
    print("\nours / mamba_ssm (same GPU, same call, timed alike; below 1 means ours is faster): one call at a time, "
          "then back to back; mamba_ssm's forward over the copy floor, and ours within 3x where it is within 10x")
    width = impl_width(impl for impl, _, _ in rows)
    print(f"{'impl':<{width}} {'shape':<16} {'peer fwd ms':>12} {'peer f+b ms':>12} {'fwd ratio':>10} "
          f"{'f+b ratio':>10} {'b2b peer fwd':>13} {'b2b peer f+b':>13} {'b2b fwd':>8} {'b2b f+b':>8} "
          f"{'peer/floor':>10} {'3x target':>13}")
    for impl, shape, row in rows:
        name = shape.name.split("/")[0]
        if "error" in row or name not in peer:
            continue
        theirs = peer[name]
        ratio = lambda key: row[key] / theirs[key]
        ours_floor, peer_floor = (times_floor(t["fwd_batched"], shape, dtype, bandwidth) for t in (row, theirs))
        print(f"{impl:<{width}} {name:<16} {fmt_ms(theirs['fwd']):>12} {fmt_ms(theirs['fwd_bwd']):>12} "
              f"{ratio('fwd'):10.2f} {ratio('fwd_bwd'):10.2f} {fmt_ms(theirs['fwd_batched']):>13} "
              f"{fmt_ms(theirs['fwd_bwd_batched']):>13} {ratio('fwd_batched'):8.2f} {ratio('fwd_bwd_batched'):8.2f} "
              f"{peer_floor:10.1f} {floor_target(ours_floor, peer_floor):>13}")


def impl_width(impls) -> int:
    """Width of the impl column: 12, or the longest ``pallas:<config>`` label."""
    return max([12] + [len(impl) for impl in impls])


def print_header(width: int, bandwidth: float, dtype) -> None:
    print(f"\ncopy bandwidth (read+write): {bandwidth / 1e9:.1f} GB/s; dtype {jnp.dtype(dtype).name}")
    header = (f"{'impl':<{width}} {'shape (rows,L,D,N)':<32} {'fwd ms':>10} {'fwd+bwd ms':>11} {'b2b fwd':>10} "
              f"{'b2b f+b':>10} {'peak mem':>13} {'floor ms':>9} {'fwd GB/s':>9} {'fwd/floor':>9}")
    print(header)
    print("-" * len(header), flush=True)


def print_row(width: int, impl: str, shape: Shape, row: dict, bandwidth: float, dtype) -> None:
    """One row of the table, printed as soon as it is measured: a run cut off keeps the rows it finished."""
    label = f"{shape.name} ({shape.rows},{shape.length},{shape.dim},{shape.d_state})"
    floor_bytes = forward_bytes(shape, dtype)
    if "error" in row:
        print(f"{impl:<{width}} {label:<32} {row['error']}", flush=True)
        return
    fwd = row["fwd_batched"]
    print(f"{impl:<{width}} {label:<32} {fmt_ms(row['fwd'])} {fmt_ms(row['fwd_bwd']):>11} {fmt_ms(fwd)} "
          f"{fmt_ms(row['fwd_bwd_batched'])} {fmt_bytes(row['peak']):>13} {fmt_ms(floor_bytes / bandwidth):>9} "
          f"{floor_bytes / fwd / 1e9:9.1f} {times_floor(fwd, shape, dtype, bandwidth):9.1f}", flush=True)


def main() -> None:
    on_gpu = jax.default_backend() == "gpu"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action=argparse.BooleanOptionalAction, default=not on_gpu,
                        help="shrunken shapes (default when no GPU)")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of " + ",".join(IMPLS))
    parser.add_argument("--shapes", help="comma-separated shape names (default: the five generic ones; the "
                        "model's stages are " + ",".join(s.name for s in MODEL_SHAPES) + ")")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peer", metavar="DIR", help="also time mamba_ssm from this copy of shared/peer/mamba_ssm")
    parser.add_argument("--pallas-configs", default="", metavar="CONFIGS",
                        help="comma-separated Pallas kernel configs (scan_tune.py's format) timed as extra impls")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # "impl@shape" or "bandwidth", see isolated()
    args = parser.parse_args()
    if args.peer and not on_gpu:
        raise SystemExit("--peer needs a GPU (mamba_ssm's kernel is CUDA)")
    dtype = jnp.dtype(args.dtype)
    generic, model = (SMALL_SHAPES, SMALL_MODEL_SHAPES) if args.small else (SHAPES, MODEL_SHAPES)
    shapes = {s.name: s for s in select_shapes(generic + model, args.shapes, default=generic)}
    bandwidth_bytes = 2**30 if on_gpu else 2**26
    if args.one == "bandwidth":
        print(json.dumps({"bandwidth": copy_bandwidth(bandwidth_bytes, args.repeats)}))
        return
    if args.one:  # a child of ``isolated``, which names its shape but not the parent's --shapes
        impl, name = args.one.rsplit("@", 1)
        print(json.dumps(measure(impl, {s.name: s for s in generic + model}[name], dtype, args.repeats)))
        return
    impls = [i for i in args.impls.split(",") if i in IMPLS]
    impls += [f"pallas:{config}" for config in args.pallas_configs.split(",") if config]
    if not on_gpu and any(i.startswith("pallas") for i in impls):
        print("no GPU: skipping pallas (interpret mode is not a timing)")
        impls = [i for i in impls if not i.startswith("pallas")]
    if on_gpu:
        result = isolated("bandwidth", args)
        if "bandwidth" not in result:
            raise SystemExit(f"copy bandwidth measurement failed: {result['error']}")
        bandwidth = result["bandwidth"]
    else:
        bandwidth = copy_bandwidth(bandwidth_bytes, args.repeats)
    rows, width = [], impl_width(impls)
    print_header(width, bandwidth, dtype)
    for shape in shapes.values():
        for impl in impls:
            if on_gpu:
                row = isolated(f"{impl}@{shape.name}", args)
            else:
                row = measure(impl, shape, dtype, args.repeats)
            rows.append((impl, shape, row))
            print_row(width, impl, shape, row, bandwidth, dtype)
    if args.peer:
        print_peer_ratios(rows, peer_times(args.peer, dtype, args.repeats), bandwidth, dtype)


if __name__ == "__main__":
    main()
