"""SNARM's bank and nearest-patch search: device memory for one MVTec-sized category, and inference images/s.

    python benchmarks/snarm_memory.py            # GPU: 300 training images at 256 px, the default config's model
    python benchmarks/snarm_memory.py --small    # CPU: 48 images at 128 px, same model (a reduced-size check)

The bank is built exactly as training builds it (``ssm_jax.training.residual.build_bank``: encoder pass 1 keeps
random projections, greedy k-center coreset, pass 2 gathers the chosen rows) from random images: sizes, memory and
time do not depend on pixel values or weights. Then the full predict step (features, inter-residuals against the
bank, references, intra-residuals, 16 heads, maps, scores) is timed on ``--batch`` images: median of ``--repeats``
calls after one warm-up. Memory, per jitted piece, is XLA's buffer assignment of the compiled program (arguments +
outputs + temporaries; ``memory_analysis``), and on a GPU also the allocator's peak (``peak_bytes_in_use``), which
includes the encoder's weights. The stated budget (``--budget_mib``) covers the bank's build and search: the coreset
selection's and the predict step's compiled footprints, bank included; the table says whether they fit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs.snarm_common import snarm_config  # noqa: E402
from ssm_jax.models.patch_bank import greedy_coreset, random_projection  # noqa: E402
from ssm_jax.models.snarm import SNARM, anomaly_map_from_logits, build_snarm  # noqa: E402
from ssm_jax.training.residual import bank_layout, build_bank  # noqa: E402

MIB = 2**20


def _footprint(compiled) -> float:
    """MiB of a compiled program's arguments, outputs and temporaries (XLA's buffer assignment)."""
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes) / MIB


def _peak() -> float | None:
    stats = jax.devices()[0].memory_stats()
    return stats["peak_bytes_in_use"] / MIB if stats and "peak_bytes_in_use" in stats else None


def random_batches(num_images: int, size: int, batch: int, seed: int = 0):
    """A ``batches()`` factory: ImageNet-normalised-looking random images in source order, made batch by batch."""
    def batches():
        for start in range(0, num_images, batch):
            n = min(batch, num_images - start)
            rng = np.random.default_rng([seed, start])
            yield {"image": rng.standard_normal((n, size, size, 3), dtype=np.float32),
                   "index": np.arange(start, start + n)}
    return batches


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="CPU-sized: 48 images at 128 px, batch 8, 3 repeats")
    parser.add_argument("--images", type=int, default=300, help="normal training images of the category")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=32, help="images per predict call (and per bank batch)")
    parser.add_argument("--repeats", type=int, default=10, help="timed predict calls")
    parser.add_argument("--encoder", default=None, help="override config.model.encoder (e.g. resnet18)")
    parser.add_argument("--budget_mib", type=float, default=1024.0, help="the stated budget for bank + search")
    args = parser.parse_args(argv)
    if args.small:
        args.images, args.size, args.batch, args.repeats = 48, 128, 8, 3

    config = snarm_config("mvtec", None, image_size=args.size)
    if args.encoder:
        config.model.encoder = args.encoder
    model = build_snarm(config.model)
    layout = bank_layout(model, args.size, args.images, config.bank, config.seed)
    model = model.clone(bank_size=layout.size)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, args.size, args.size, 3)))
    features = jax.jit(lambda images: model.apply(variables, images, method=SNARM.patch_features))
    batches = random_batches(args.images, args.size, args.batch)

    start = time.perf_counter()
    bank, image_index, _ = build_bank(features, batches, layout, config.bank.projection_dim, config.seed)
    bank.block_until_ready()
    build_s = time.perf_counter() - start
    build_peak = _peak()
    proj_dim = min(config.bank.projection_dim, layout.channels)
    projected = jax.ShapeDtypeStruct((layout.num_kept, proj_dim), jnp.float32)
    greedy_mib = _footprint(jax.jit(greedy_coreset, static_argnums=(1, 2, 3)).lower(
        projected, layout.size, config.seed, None).compile())
    features_mib = _footprint(features.lower(jnp.zeros((args.batch, args.size, args.size, 3))).compile())
    project_mib = _footprint(jax.jit(lambda f: random_projection(f.reshape(-1, f.shape[-1]), proj_dim)).lower(
        jax.ShapeDtypeStruct((args.batch, *layout.grid, layout.channels), jnp.float32)).compile())

    variables = {**variables, "bank": {"features": bank, "image_index": image_index}}
    predict = jax.jit(lambda v, x: anomaly_map_from_logits(model.apply(v, x)["logits"], x.shape[1:3],
                                                           config.eval.sigma, config.eval.score_pool,
                                                           config.eval.score_stride))
    images = jnp.asarray(next(batches())["image"])
    if images.shape[0] < args.batch:
        raise ValueError(f"--batch {args.batch} exceeds --images {args.images}")
    predict_mib = _footprint(predict.lower(variables, images).compile())
    jax.block_until_ready(predict(variables, images))
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(predict(variables, images))
        times.append(time.perf_counter() - start)
    per_batch = float(np.median(times))

    device = jax.devices()[0]
    print(f"SNARM bank and search on {device.platform} ({device.device_kind}); {args.images} images at "
          f"{args.size} px, {config.model.encoder} layers {tuple(config.model.feature_layers)}, "
          f"feature grid {layout.grid[0]}x{layout.grid[1]}, {layout.channels} channels")
    rows = [
        ("training patches (kept before the coreset)", f"{layout.num_kept:,}"),
        ("bank rows (coreset_ratio {:g})".format(config.bank.coreset_ratio), f"{layout.size:,}"),
        ("bank size", f"{bank.nbytes / MIB:.1f} MiB"),
        ("projections held for the coreset", f"{layout.num_kept * proj_dim * 4 / MIB:.1f} MiB"),
        ("bank build time (2 encoder passes + greedy)", f"{build_s:.1f} s"),
        ("compiled: encoder features, one batch", f"{features_mib:.1f} MiB"),
        ("compiled: projection, one batch", f"{project_mib:.1f} MiB"),
        ("compiled: greedy coreset selection", f"{greedy_mib:.1f} MiB"),
        (f"compiled: predict step, batch {args.batch} (bank and weights included)", f"{predict_mib:.1f} MiB"),
        (f"inference, batch {args.batch}, median of {args.repeats}", f"{args.batch / per_batch:.1f} images/s "
                                                                     f"({per_batch * 1e3:.0f} ms/batch)"),
    ]
    if build_peak is not None:
        rows.append(("allocator peak after the bank build", f"{build_peak:.1f} MiB"))
        rows.append(("allocator peak after inference", f"{_peak():.1f} MiB"))
    worst = max(greedy_mib, predict_mib)
    rows.append((f"budget {args.budget_mib:.0f} MiB for bank + search (largest piece)",
                 f"{worst:.1f} MiB: {'within' if worst <= args.budget_mib else 'OVER'}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()
