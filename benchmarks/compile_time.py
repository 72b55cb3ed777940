"""Compile time of MemoryMamba's forward + backward, blocks unrolled vs one nn.scan per stage (issue 10).

    python benchmarks/compile_time.py                                      # tiny preset, 224 px, batch 8
    python benchmarks/compile_time.py --presets tiny small base --remat none block
    python benchmarks/compile_time.py --image_size 32 --batch 2            # a quick run on the CPU

Per row: a fresh ``jax.jit`` of ``jax.grad`` of the eq. 25 loss in train mode (the computation the train step
differentiates; the optimizer update adds little to compile) on abstract parameters and images, so nothing is
initialised or run. "lower" is tracing + lowering to StableHLO, "compile" is XLA's compilation; "temp" is the
compiled program's temporary buffer size (activation memory, what ``--remat block`` reduces). The persistent
compilation cache is off, so every row compiles from scratch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ssm_jax.losses import memorymamba_loss  # noqa: E402
from ssm_jax.models.memorymamba import build_memorymamba, memorymamba_model_config, memorymamba_presets  # noqa: E402

NUM_CLASSES = 4  # ELPV; the class count does not change compile time
LOSS = dict(lambda_c=0.1, lambda_f=0.1, margin=0.5, temperature=0.1)  # configs/memorymamba_common.py


def measure(preset: str, scan_blocks: bool, remat: str, args) -> dict:
    """Lower and compile the gradient of the loss for one model variant; seconds and compiled temp memory."""
    model = build_memorymamba(memorymamba_model_config(NUM_CLASSES, preset=preset, scan_blocks=scan_blocks,
                                                       remat=remat, scan_impl=args.scan_impl, dtype=args.dtype))
    images = jax.ShapeDtypeStruct((args.batch, args.image_size, args.image_size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((args.batch,), jnp.int32)
    key = jax.random.key(0)
    params = jax.eval_shape(model.init, key, images)["params"]

    def loss(params, images, labels):
        outputs = model.apply({"params": params}, images, train=True, rngs={"dropout": key})
        return memorymamba_loss(outputs, labels, **LOSS)[0]

    start = time.perf_counter()
    lowered = jax.jit(jax.grad(loss)).lower(params, images, labels)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    analysis = compiled.memory_analysis()
    return {"params": sum(x.size for x in jax.tree.leaves(params)), "lower_s": lowered_at - start,
            "compile_s": done - lowered_at, "temp_gib": analysis.temp_size_in_bytes / 2**30 if analysis else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny"], choices=list(memorymamba_presets))
    parser.add_argument("--image_size", "--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--scan_blocks", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--remat", nargs="+", default=["none"], choices=["none", "block"])
    parser.add_argument("--scan_impl", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    device = jax.devices()[0]
    print(f"# {device.device_kind} ({device.platform}); grad of the train-mode loss, {args.image_size} px, batch "
          f"{args.batch}, scan_impl {args.scan_impl}, activations {args.dtype}")
    print(f"{'preset':<7}{'depths':<15}{'scan_blocks':<13}{'remat':<7}{'params':>12}{'lower (s)':>11}"
          f"{'compile (s)':>13}{'temp (GiB)':>12}")
    for preset in args.presets:
        for scan in args.scan_blocks:
            for remat in args.remat:
                r = measure(preset, scan == "on", remat, args)
                temp = f"{r['temp_gib']:>12.3f}" if r["temp_gib"] is not None else f"{'n/a':>12}"
                depths = str(memorymamba_presets[preset]["depths"])
                print(f"{preset:<7}{depths:<15}{scan:<13}{remat:<7}{r['params']:>12,}{r['lower_s']:>11.1f}"
                      f"{r['compile_s']:>13.1f}{temp}", flush=True)


if __name__ == "__main__":
    main()
