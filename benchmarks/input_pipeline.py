"""Input-pipeline throughput: images/second decoded + resized + normalised + batched, per worker count.

    python -m benchmarks.input_pipeline --workers 0,1,2 [--source elpv|jpeg] [--root DIR] [--image-size 256] [--augment]

``elpv`` reads the packaged ELPV cells (300x300 grayscale PNG); ``jpeg`` writes ``--num-images`` 512x512
RGB JPEG crops of scikit-image textures to a temporary class-per-folder tree first. Workers 0 means
decoding in this process with ``--threads`` threads; per-core rates divide by max(1, workers).
"decoding" times batches with the decoded-image cache off (every epoch decodes again); "cached" times batches
after one whole epoch with the cache on (what later epochs of a training run cost when the images fit in memory).
``--augment`` adds the ELPV ``:gpu`` recipe's training augmentations (both flips, 90-degree rotations and the
affine warp, read from ``configs/memorymamba_elpv.py``), which run on every read, cached or not.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

from configs import memorymamba_elpv
from ssm_jax.data import get_source, make_pipeline
from ssm_jax.data.synthetic import TEXTURES, texture, random_view


def jpeg_tree(directory: str, num_images: int) -> str:
    rng = np.random.default_rng(0)
    for i in range(num_images):
        name = TEXTURES[i % len(TEXTURES)]
        path = os.path.join(directory, name, f"{i:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(random_view(texture(name), rng, 512)).save(path, quality=90)
    return directory


def augmentations(on: bool) -> dict:
    """The ELPV ``:gpu`` recipe's augmentation arguments of ``make_pipeline``, read from its config, or none."""
    if not on:
        return {}
    data = memorymamba_elpv.get_config("gpu").data
    return {"flips": tuple(data.flips), "rot90": data.rot90, "affine": tuple(data.affine)}


def measure(source, workers: int, args, cached: bool) -> float:
    ds = make_pipeline(source, batch_size=args.batch_size, image_size=args.image_size, train=True, seed=0,
                       shard_index=0, shard_count=1, num_workers=workers, num_threads=args.threads,
                       cache_bytes=1 << 40 if cached else 0, **augmentations(args.augment))
    it = iter(ds)
    epoch = -(-len(source) // args.batch_size)
    for _ in range(epoch + args.warmup if cached else args.warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(args.batches):
        batch = next(it)
    elapsed = time.perf_counter() - start
    assert batch["image"].shape == (args.batch_size, args.image_size, args.image_size, 3)
    return args.batches * args.batch_size / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", choices=("elpv", "jpeg"), default="elpv")
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker-process counts")
    p.add_argument("--threads", type=int, default=1, help="prefetch threads when workers is 0")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--root", default=None, help="an ELPV folder (labels.csv, images/; e.g. an unpacked pack) "
                   "instead of the elpv-dataset package's")
    p.add_argument("--augment", action="store_true", help="add the ELPV gpu recipe's flips, rotations and warp")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = (get_source("elpv", args.root, "all") if args.source == "elpv"
                  else get_source("folder", jpeg_tree(tmp, args.num_images), "all"))
        print(f"source={args.source} ({len(source)} images)  size={args.image_size}  batch={args.batch_size}  "
              f"augment={args.augment}  cpus={os.cpu_count()}")
        print(f"{'workers':>7} {'threads':>7} {'decoding images/s':>18} {'per core':>9} {'cached images/s':>16}")
        for workers in (int(w) for w in args.workers.split(",")):
            rate, cached = measure(source, workers, args, False), measure(source, workers, args, True)
            print(f"{workers:>7} {args.threads if workers == 0 else '-':>7} {rate:>18.1f} "
                  f"{rate / max(1, workers):>9.1f} {cached:>16.1f}", flush=True)


if __name__ == "__main__":
    main()
