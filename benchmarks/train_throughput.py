"""Training throughput of MemoryMamba: images/s and peak memory per model size, one jitted train step.

    python benchmarks/train_throughput.py                         # GPU: 224 px, tiny/small/base, batch 64
    python benchmarks/train_throughput.py --image-size 64 --batch-size 32 --sizes tiny --scan-impl sequential
    python benchmarks/train_throughput.py --sizes tiny --scan-impl none   # the step without its recurrence
    python benchmarks/train_throughput.py --sizes tiny --memory off       # the backbone alone (VMamba-like)

Times the full train step (forward, the eq. 25 loss, backward, AdamW update) on random images after a
warm-up step, median of ``--steps``; compile is the seconds to lower and compile the step (Pallas kernels
included); peak memory is the device's ``peak_bytes_in_use`` where the backend
reports it (GPU), else the compiled step's temporary buffer size. Prints a table.

``--scan-impl none`` swaps the selective scan for ``scanless``, an elementwise stand-in with the same inputs and
output shape, so the step keeps every other layer: against the real step, the share of the step the scan takes.
``--memory off`` drops the coarse and fine memories and the fusion (the paper's ablation row); with both, the three
runs split the step into scan, memory modules and the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import median_step_seconds  # noqa: E402
from configs.memorymamba_common import apply_size, memorymamba_config  # noqa: E402
from ssm_jax.training import classification  # noqa: E402
from ssm_jax.training.mesh import make_mesh, shard_batch  # noqa: E402
from ssm_jax.training.optim import count_params, make_optimizer  # noqa: E402
from ssm_jax.training.run import build_model  # noqa: E402


def peak_memory(compiled) -> str:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB (device peak)"
    analysis = compiled.memory_analysis()
    return f"{analysis.temp_size_in_bytes / 2**30:.2f} GiB (compiled temp)" if analysis else "n/a"


def compiled_train_step(config, batch_size: int, devices=None):
    """train.py's jitted classification train step for ``config`` (forward, the eq. 25 loss, backward, AdamW),
    compiled for one batch of random images already on ``devices`` (default: all): (compiled step, initial state,
    batch, compile seconds)."""
    mesh = make_mesh(devices)
    model = build_model(config)
    size = config.data.image_size
    state = classification.create_state(model, make_optimizer(config.optim, 1000), jax.random.PRNGKey(0), size, mesh)
    rng = np.random.default_rng(0)
    batch = shard_batch({"image": rng.standard_normal((batch_size, size, size, 3), dtype=np.float32),
                         "label": rng.integers(0, config.model.num_classes, batch_size).astype(np.int32)}, mesh)
    start = time.perf_counter()
    compiled = classification.make_train_step(config.loss, mesh).lower(state, batch).compile()
    return compiled, state, batch, time.perf_counter() - start


def time_train_step(config, batch_size: int, steps: int, warmup: int = 1, devices=None) -> dict:
    """``compiled_train_step``'s step run on its batch: parameter count, compile seconds, median step seconds after
    ``warmup`` steps, images/s and peak memory."""
    compiled, state, batch, compile_s = compiled_train_step(config, batch_size, devices)
    params = count_params(state.params)  # before the steps: the train step donates its state
    held = {"state": state, "metrics": None}

    def step():
        held["state"], held["metrics"] = compiled(held["state"], batch)

    seconds = median_step_seconds(step, lambda: jax.block_until_ready(held["metrics"]), steps, warmup)
    return {"params": params, "compile_s": compile_s, "step_s": seconds, "images_per_s": batch_size / seconds,
            "memory": peak_memory(compiled)}


SCAN_USERS = ("ssm_jax.nn.ss2d.selective_scan", "ssm_jax.nn.mamba.selective_scan")


def scanless(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, **_):
    """y from u, delta, B, C (and D, z) in one elementwise expression, with no recurrence: the scan's inputs keep
    their producers and gradients, so a step with it is the step without the scan. B and C enter through their
    mean over states (and groups), which also spares part of their producers' backward: the scan's share measured
    with it is an upper bound."""
    bc = jnp.mean(B * C, axis=tuple(range(2, B.ndim)))[..., None] + jnp.mean(A)
    dt = delta + delta_bias if delta_bias is not None else delta
    y = u * (jax.nn.softplus(dt) if delta_softplus else dt) + bc.astype(u.dtype)
    if D is not None:
        y = y + D * u
    return (y * jax.nn.silu(z) if z is not None else y).astype(u.dtype)


def scan_patched(scan_impl: str):
    """The scan as ``scan_impl`` asks: ``none`` swaps in ``scanless`` where the layers call the scan."""
    if scan_impl != "none":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for target in SCAN_USERS:
        stack.enter_context(mock.patch(target, scanless))
    return stack


def bench_config(size: str, args):
    """The MemoryMamba config a row times: ``size``, and the image size, scan, dtype and memory of ``args``."""
    config = memorymamba_config("elpv", 4, None, image_size=args.image_size)
    apply_size(config, size)
    config.model.scan_impl = "auto" if args.scan_impl == "none" else args.scan_impl
    config.model.dtype = args.dtype
    memory = args.memory == "on"
    config.model.use_coarse_memory = config.model.use_fine_memory = config.model.use_fusion = memory
    return config


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``bench_config`` reads, with the batch size: the step every MemoryMamba step benchmark builds."""
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--scan-impl", default="auto", help="a selective_scan impl, or none (train_throughput.py)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--memory", default="on", choices=["on", "off"], help="MemoryMamba's memory modules")


def measure(size: str, args) -> dict:
    config = bench_config(size, args)
    with scan_patched(args.scan_impl):
        return {"size": size, **time_train_step(config, args.batch_size, args.steps)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--steps", type=int, default=10)
    add_step_arguments(parser)
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"# {len(jax.devices())} x {device.device_kind} ({device.platform}); {args.image_size} px, global batch "
          f"{args.batch_size}, scan {args.scan_impl}, memory {args.memory}, activations {args.dtype}, median of "
          f"{args.steps} steps")
    print(f"{'size':<7}{'params':>12}{'compile (s)':>13}{'step (s)':>11}{'images/s':>11}  peak memory", flush=True)
    for size in args.sizes:
        r = measure(size, args)
        print(f"{r['size']:<7}{r['params']:>12,}{r['compile_s']:>13.1f}{r['step_s']:>11.3f}{r['images_per_s']:>11.1f}"
              f"  {r['memory']}", flush=True)


if __name__ == "__main__":
    main()
