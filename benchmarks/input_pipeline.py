"""Input-pipeline throughput: images/second decoded + resized + normalised + batched, per worker count.

    python -m benchmarks.input_pipeline --workers 0,1,2 [--source elpv|jpeg] [--image-size 256]

``elpv`` reads the packaged ELPV cells (300x300 grayscale PNG); ``jpeg`` writes ``--num-images`` 512x512
RGB JPEG crops of scikit-image textures to a temporary class-per-folder tree first. Workers 0 means
decoding in this process with ``--threads`` threads; per-core rates divide by max(1, workers).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

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


def measure(source, workers: int, args) -> float:
    ds = make_pipeline(source, batch_size=args.batch_size, image_size=args.image_size, train=True, seed=0,
                       shard_index=0, shard_count=1, num_workers=workers, num_threads=args.threads)
    it = iter(ds)
    for _ in range(args.warmup):
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
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = (get_source("elpv", None, "all") if args.source == "elpv"
                  else get_source("folder", jpeg_tree(tmp, args.num_images), "all"))
        print(f"source={args.source} ({len(source)} images)  size={args.image_size}  batch={args.batch_size}  "
              f"cpus={os.cpu_count()}")
        print(f"{'workers':>7} {'threads':>7} {'images/s':>10} {'images/s/core':>14}")
        for workers in (int(w) for w in args.workers.split(",")):
            rate = measure(source, workers, args)
            print(f"{workers:>7} {args.threads if workers == 0 else '-':>7} {rate:>10.1f} {rate / max(1, workers):>14.1f}")


if __name__ == "__main__":
    main()
