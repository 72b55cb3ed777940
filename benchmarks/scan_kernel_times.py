"""Where a scan call's GPU time goes, kernel by kernel, and what a back-to-back batch adds to it.

    ncu --clock-control none --metrics gpu__time_duration.sum --csv \\
        python benchmarks/scan_kernel_times.py pallas vmamba-64x64 bfloat16 > ours.csv
    ncu ... python benchmarks/scan_kernel_times.py peer vmamba-64x64 bfloat16 --peer peer/mamba_ssm > peer.csv
    python benchmarks/scan_kernel_times.py summary ours.csv          # kernels per call, their sum
    python benchmarks/scan_kernel_times.py batches vmamba-64x64 bfloat16   # ours, 10 and 50 calls a batch
    ncu --clock-control none --metrics $(python benchmarks/scan_kernel_times.py metric-names) --csv \
        --kernel-name regex:selective_scan --launch-skip 3 --launch-count 3 \
        python benchmarks/scan_kernel_times.py pallas vmamba-64x64 float32 --calls 2 > counters.csv
    python benchmarks/scan_kernel_times.py metrics counters.csv          # a kernel a column

``pallas`` and ``peer`` run the default Pallas forward (``scan.py``'s ``pallas`` rows, all inputs on; with
``--config`` a ``scan_tune.py`` config instead) or mamba_ssm's forward ``--calls`` times (the first compiles, which
costs no GPU time), under Nsight Compute (``--clock-control none`` leaves the clocks alone; ``sass_stalls.py`` reads
where each kernel's warps wait). ``summary`` reads ncu's CSV: per kernel name its launches and GPU time; kernels
launched exactly ``--calls`` times are the call's own (the inputs' setup launches others; a call's kernel that
shares its name with a setup kernel, as fp32's gate fusion does, is left out), and their sum is the call's kernel
time, without the gaps between kernels. ``batches`` times ours as ``scan.batched_time`` does, at 10 and 50 calls
a batch, and the host's time to queue a call without waiting: a batch pays one dispatch latency and one wait,
spread over its calls, and the two sizes give the per-call rate without it. ``metrics`` prints ncu's counters of
``metric-names`` (``METRICS``: time, registers, warps, issue and pipe use, DRAM, load requests, stall reasons), a
kernel a column: whether a kernel is bound by its exponentials (the ``xu`` pipe), its issue slots or its loads.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ncu counters that say what bounds a kernel (session 37's profile, NOTES.md): time, registers, resident warps, issue
# slots, the special-function (xu: ex2, lg2, rcp), FMA, ALU and load-store pipes, DRAM, global load requests and
# sectors, and warp cycles per issued instruction by stall reason.
METRICS = ("gpu__time_duration.sum", "launch__registers_per_thread", "sm__warps_active.avg.per_cycle_active",
           "sm__issue_active.avg.pct_of_peak_sustained_active",
           "sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active",
           "sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active",
           "sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active",
           "sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active",
           "dram__throughput.avg.pct_of_peak_sustained_elapsed", "smsp__inst_executed.sum",
           "l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum", "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum",
           *(f"smsp__average_warps_issue_stalled_{reason}_per_issue_active.ratio"
             for reason in ("long_scoreboard", "wait", "short_scoreboard", "mio_throttle", "not_selected",
                            "math_pipe_throttle", "lg_throttle")))

UNITS = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}


def _rows(path: str) -> list[dict]:
    """ncu's CSV rows (its own ``==PROF==`` lines skipped); exits naming a file that is not there."""
    if not os.path.isfile(path):
        raise SystemExit(f"scan_kernel_times.py: no ncu CSV at {path} (expected ncu ... --csv output)")
    with open(path) as f:
        return list(csv.DictReader(line for line in f if line.startswith('"')))


def kernel_times(path: str) -> dict[str, list[float]]:
    """{kernel name: GPU us of each launch, in launch order} from ncu's CSV (``--metrics gpu__time_duration.sum``)."""
    rows = [r for r in _rows(path) if r.get("Metric Name") == "gpu__time_duration.sum"]
    times: dict[str, list[float]] = {}
    for r in rows:
        value = float(r["Metric Value"].replace(",", "")) * UNITS[r["Metric Unit"]]
        times.setdefault(r["Kernel Name"], []).append(value)
    return times


def metric_table(path: str) -> dict[str, dict[str, str]]:
    """{kernel name: {metric: "value unit"}} from ncu's ``--metrics ... --csv`` output, kernels in launch order; a
    kernel launched more than once keeps its last launch. Exits naming the file if it holds no metric rows."""
    table: dict[str, dict[str, str]] = {}
    for r in _rows(path):
        if "Metric Name" in r and "Kernel Name" in r:
            table.setdefault(r["Kernel Name"], {})[r["Metric Name"]] = f'{r["Metric Value"]} {r["Metric Unit"]}'.strip()
    if not table:
        raise SystemExit(f"scan_kernel_times.py metrics: {path} holds no ncu metric rows (expected the CSV of "
                         "ncu --metrics ... --csv)")
    return table


def print_metric_table(table: dict[str, dict[str, str]]) -> None:
    """One row a metric (in ``METRICS`` order, then any others), one column a kernel."""
    kernels = list(table)
    names = [m for m in METRICS if any(m in table[k] for k in kernels)]
    names += sorted({m for k in kernels for m in table[k]} - set(names))
    width = max(len(n) for n in names) + 2
    print(f"{'metric':<{width}}" + "".join(f"{k[-28:]:>30}" for k in kernels))
    for n in names:
        print(f"{n:<{width}}" + "".join(f"{table[k].get(n, '-'):>30}" for k in kernels))


def summary(path: str, calls: int) -> dict[str, float]:
    """{kernel name: GPU us a call} for the kernels launched ``calls`` times; prints every kernel seen."""
    times = kernel_times(path)
    per_call = {name: sum(t) / calls for name, t in times.items() if len(t) == calls}
    for name, t in times.items():
        own = f"{per_call[name]:9.2f} us a call" if name in per_call else "   (setup)"
        print(f"{name[:70]:<70} {len(t):4d} launches, median {statistics.median(t):9.2f} us {own}")
    print(f"kernels of one call: {sum(per_call.values()):.1f} us")
    return per_call


def _shape(name: str):
    from benchmarks.rows import select_shapes
    from benchmarks.scan import SHAPES
    return select_shapes(SHAPES, name)[0]


def _ours(shape_name: str, dtype: str, config: str = ""):
    """The jitted Pallas forward and its inputs on one shape: the default (``scan.py``'s ``pallas`` rows), or with a
    ``scan_tune.py`` config."""
    import jax.numpy as jnp

    from benchmarks.scan import functions, make_inputs
    shape = _shape(shape_name)
    args, _ = make_inputs(shape, jnp.dtype(dtype))
    return functions(f"pallas:{config}" if config else "pallas", **shape.scan_kwargs())[0], args


def run_pallas(shape_name: str, dtype: str, calls: int, config: str = "") -> None:
    import jax
    forward, args = _ours(shape_name, dtype, config)
    for _ in range(calls):
        jax.block_until_ready(forward(*args))


def run_peer(shape_name: str, dtype: str, calls: int, peer_dir: str) -> None:
    import torch

    from benchmarks.mamba_ssm_times import load_peer, peer_inputs
    shape = _shape(shape_name)
    scan_fn = load_peer(peer_dir)
    args, _ = peer_inputs(shape.rows, shape.length, shape.dim, shape.d_state, getattr(torch, dtype), "cuda")
    with torch.no_grad():
        for _ in range(calls):
            scan_fn(*args, delta_softplus=True)
    torch.cuda.synchronize()


def batches(shape_name: str, dtype: str, repeats: int = 7) -> dict[str, float]:
    """Ours at 10 and 50 calls a batch, the rate and the batch's fixed cost solved from the two (T(n) = fixed + n
    rate), and the host's time to queue a call without waiting; all in us."""
    import jax
    import numpy as np

    from benchmarks.scan import batched_time, warm_up
    forward, args = _ours(shape_name, dtype)
    warm_up(forward, *args, calls=3, seconds=1.0)
    b10, b50 = (batched_time(forward, *args, calls=n, repeats=repeats) * 1e6 for n in (10, 50))
    queued = []
    for _ in range(repeats):
        jax.block_until_ready(forward(*args))
        start = time.perf_counter()
        outs = [forward(*args) for _ in range(10)]
        queued.append((time.perf_counter() - start) / 10 * 1e6)
        jax.block_until_ready(outs)
    rate = (50 * b50 - 10 * b10) / 40
    row = {"batch_10": b10, "batch_50": b50, "rate": rate, "fixed_per_batch": 10 * (b10 - rate),
           "queued": float(np.median(queued))}
    print(" ".join(f"{k} {v:.1f} us" for k, v in row.items()))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("pallas", "peer", "summary", "batches", "metrics", "metric-names"))
    parser.add_argument("what", nargs="*", help="SHAPE DTYPE, or for summary and metrics the ncu CSV")
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--peer", default="peer/mamba_ssm", help="a copy of ../shared/peer/mamba_ssm")
    parser.add_argument("--config", default="", help="pallas: a scan_tune.py config in place of the default, e.g. "
                        "split:32/16:0:1:1:::::::::0 (pair_chunks off) to profile it")
    args = parser.parse_args()
    if args.mode == "metric-names":
        print(",".join(METRICS))
    elif not args.what:
        parser.error(f"{args.mode} needs {'the ncu CSV' if args.mode in ('summary', 'metrics') else 'SHAPE DTYPE'}")
    elif args.mode == "metrics":
        print_metric_table(metric_table(args.what[0]))
    elif args.mode == "summary":
        summary(args.what[0], args.calls)
    elif args.mode == "pallas":
        run_pallas(*args.what, args.calls, args.config)
    elif args.mode == "peer":
        run_peer(*args.what, args.calls, args.peer)
    else:
        batches(*args.what)


if __name__ == "__main__":
    main()
