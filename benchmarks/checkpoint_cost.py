"""What a checkpoint costs a MemoryMamba training run: the loop's finiteness check, the side-car's checksums and
orbax's write, each first (compiling) and then steady, and what a background save costs the steps around it.

    python benchmarks/checkpoint_cost.py                                   # GPU: tiny, 224 px, batch 64
    python benchmarks/checkpoint_cost.py --image-size 64 --batch-size 8 --steps 4 --repeats 3   # CPU

Before each checkpoint ``ssm_jax.training.loop`` checks the state finite, in the same pass as the checksums of every
array that ``Checkpointer.save`` then writes (``ssm_jax.training.checkpoint.summarise``); that fetches values, so the
host waits there for the queued steps. Then, over ``--repeats`` rounds, a background save (``wait=False``, the
check first) as the loop makes it: how long it holds the loop, and how much longer the ``--steps`` steps after it take
than the same steps just before, while orbax writes. Their sum is what a checkpoint costs a run, where the write ends
within those steps (the row says how often it did not: then give more ``--steps``, as many as a run has between
checkpoints). The same again with ``train.checkpoint_in_thread`` (orbax's copy to the host in a worker thread, from a
copy of the state on the devices). Prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.train_throughput import add_step_arguments, bench_config, compiled_train_step  # noqa: E402
from ssm_jax.training.checkpoint import Checkpointer  # noqa: E402
from ssm_jax.training.loop import check_state_is_finite, checked_save  # noqa: E402


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def first_and_steady(fn, repeats: int) -> tuple[float, float]:
    """Seconds of ``fn()``'s first call, and the median of ``repeats`` more."""
    first = seconds(fn)
    return first, statistics.median(seconds(fn) for _ in range(repeats))


class Run:
    """The compiled train step on its batch, with the state it threads through (the step donates it)."""

    def __init__(self, compiled, state, batch):
        self.compiled, self.state, self.batch = compiled, state, batch

    def steps(self, count: int) -> float:
        """Seconds for ``count`` steps dispatched with one queued, as the loop does, until the last has finished."""
        start = time.perf_counter()
        metrics = None
        for _ in range(count):
            self.state, step_metrics = self.compiled(self.state, self.batch)
            if metrics is not None:
                jax.block_until_ready(metrics)
            metrics = step_metrics
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - start


class Saver:
    """The loop's save (``checked_save``) at the next step number, in the background unless ``wait``."""

    def __init__(self, checkpointer: Checkpointer):
        self.checkpointer, self.step = checkpointer, 0

    def __call__(self, state, wait: bool = False) -> None:
        self.step += 1
        checked_save(self.checkpointer, self.step, state, {}, wait=wait, last_good_step=None)


def measure(args) -> list[tuple[str, str]]:
    config = bench_config(args.size, args)
    compiled, state, batch, _ = compiled_train_step(config, args.batch_size)
    run = Run(compiled, state, batch)
    run.steps(3)  # warm: the first steps' autotuning and allocations stay out of every row
    leaves = jax.tree.leaves(run.state)
    size_mb = sum(x.size * x.dtype.itemsize for x in leaves) / 2**20
    distinct = len({(x.shape, x.dtype) for x in leaves})
    rows = [("state", f"{len(leaves)} arrays of {distinct} shapes, {size_mb:,.0f} MiB")]
    step_ms = 1e3 * statistics.median(run.steps(1) for _ in range(args.repeats))
    rows.append(("one train step (alone)", f"{step_ms:,.1f} ms"))
    first, steady = first_and_steady(lambda: check_state_is_finite(run.state, 0, None, "-"), args.repeats)
    rows.append(("finiteness check and checksums", f"first {first:.2f} s, then {steady * 1e3:,.1f} ms"))
    with tempfile.TemporaryDirectory() as workdir:
        checkpointer = Checkpointer(workdir, {"model": "benchmark"}, max_to_keep=2)
        saver = Saver(checkpointer)
        first, steady = first_and_steady(lambda: saver(run.state, wait=True), args.repeats)
        rows.append(("save, waited for (both checks + write)", f"first {first:.2f} s, then {steady * 1e3:,.1f} ms"))
        rows += background_rows(run, saver, args, "")
        checkpointer.close()
    with tempfile.TemporaryDirectory() as workdir:
        checkpointer = Checkpointer(workdir, {"model": "benchmark"}, max_to_keep=2, in_thread=True)
        rows += background_rows(run, Saver(checkpointer), args, " in a worker thread (checkpoint_in_thread)")
        checkpointer.close()
    return rows


def background_rows(run: Run, saver: Saver, args, how: str) -> list[tuple[str, str]]:
    """Over ``args.repeats`` rounds, a background save as the loop makes it: how long it holds the loop, and how much
    longer the ``args.steps`` steps after it take than the same steps just before."""
    blocked, slower, unfinished = [], [], 0
    for _ in range(args.repeats):
        without = run.steps(args.steps)
        blocked.append(seconds(lambda: saver(run.state)))
        slower.append(run.steps(args.steps) - without)
        unfinished += seconds(saver.checkpointer.wait_until_finished) > 0.01
    return [(f"a background save{how} blocks the loop", f"{statistics.median(blocked) * 1e3:,.1f} ms"),
            (f"then {args.steps} steps take longer by",
             f"{statistics.median(slower) * 1e3:,.1f} ms (min {min(slower) * 1e3:,.1f}, max {max(slower) * 1e3:,.1f});"
             f" the write outlasted them {unfinished} of {args.repeats} times"
             + (": more --steps to see all it costs" if unfinished else ""))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--steps", type=int, default=100, help="steps timed after a save (MemoryMamba's configs "
                        "checkpoint every 100)")
    parser.add_argument("--repeats", type=int, default=5)
    add_step_arguments(parser)
    args = parser.parse_args()
    if args.steps < 1 or args.repeats < 1:
        raise SystemExit(f"--steps {args.steps} --repeats {args.repeats}: expected both at least 1")
    device = jax.devices()[0]
    print(f"# {len(jax.devices())} x {device.device_kind} ({device.platform}); MemoryMamba-{args.size}, "
          f"{args.image_size} px, batch {args.batch_size}, activations {args.dtype}", flush=True)
    rows = measure(args)
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        print(f"{name:<{width}}{value}", flush=True)


if __name__ == "__main__":
    main()
