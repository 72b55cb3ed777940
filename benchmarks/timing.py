"""Step timing shared by the throughput benchmarks. No framework is imported here, so a PyTorch-only process
(benchmarks/peer_vmamba.py's PyTorch side) times its step the same way without JAX touching the GPU."""

from __future__ import annotations

import statistics
import time


def median_step_seconds(step, sync, steps: int, warmup: int) -> float:
    """Median wall time of ``step()`` then ``sync()`` (wait until the device has finished) over ``steps`` calls,
    after ``warmup`` untimed calls and a sync."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"median_step_seconds: steps={steps}, warmup={warmup}; expected steps >= 1, warmup >= 0")
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
