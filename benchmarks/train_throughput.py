"""Training throughput of MemoryMamba: images/s and peak memory per model size, one jitted train step.

    python benchmarks/train_throughput.py                         # GPU: 224 px, tiny/small/base, batch 64
    python benchmarks/train_throughput.py --image-size 64 --batch-size 32 --sizes tiny --scan-impl sequential

Times the full train step (forward, the eq. 25 loss, backward, AdamW update) on random images after a
warm-up step, median of ``--steps``; compile is the seconds to lower and compile the step (Pallas kernels
included); peak memory is the device's ``peak_bytes_in_use`` where the backend
reports it (GPU), else the compiled step's temporary buffer size. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
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


def time_train_step(config, batch_size: int, steps: int, warmup: int = 1, devices=None) -> dict:
    """train.py's jitted classification train step for ``config`` (forward, the eq. 25 loss, backward, AdamW) on
    one batch of random images already on ``devices`` (default: all): parameter count, compile seconds, median step
    seconds after ``warmup`` steps, images/s and peak memory."""
    mesh = make_mesh(devices)
    model = build_model(config)
    size = config.data.image_size
    state = classification.create_state(model, make_optimizer(config.optim, 1000), jax.random.PRNGKey(0), size, mesh)
    params = count_params(state.params)  # before the steps: the train step donates its state
    rng = np.random.default_rng(0)
    batch = shard_batch({"image": rng.standard_normal((batch_size, size, size, 3), dtype=np.float32),
                         "label": rng.integers(0, config.model.num_classes, batch_size).astype(np.int32)}, mesh)
    start = time.perf_counter()
    compiled = classification.make_train_step(config.loss, mesh).lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    held = {"state": state, "metrics": None}

    def step():
        held["state"], held["metrics"] = compiled(held["state"], batch)

    seconds = median_step_seconds(step, lambda: jax.block_until_ready(held["metrics"]), steps, warmup)
    return {"params": params, "compile_s": compile_s, "step_s": seconds, "images_per_s": batch_size / seconds,
            "memory": peak_memory(compiled)}


def measure(size: str, args) -> dict:
    config = memorymamba_config("elpv", 4, None, image_size=args.image_size)
    apply_size(config, size)
    config.model.scan_impl, config.model.dtype = args.scan_impl, args.dtype
    return {"size": size, **time_train_step(config, args.batch_size, args.steps)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--scan-impl", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"# {len(jax.devices())} x {device.device_kind} ({device.platform}); {args.image_size} px, global batch "
          f"{args.batch_size}, scan {args.scan_impl}, activations {args.dtype}, median of {args.steps} steps")
    print(f"{'size':<7}{'params':>12}{'compile (s)':>13}{'step (s)':>11}{'images/s':>11}  peak memory", flush=True)
    for size in args.sizes:
        r = measure(size, args)
        print(f"{r['size']:<7}{r['params']:>12,}{r['compile_s']:>13.1f}{r['step_s']:>11.3f}{r['images_per_s']:>11.1f}"
              f"  {r['memory']}", flush=True)


if __name__ == "__main__":
    main()
