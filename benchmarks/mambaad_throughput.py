"""MambaAD training and inference throughput (images/s) at 256 px: ours (JAX) or the official PyTorch model.

    python benchmarks/mambaad_throughput.py --impl ours                      # the train.py step and eval step
    python benchmarks/mambaad_throughput.py --impl official --official-dir DIR --peer-dir peer/mamba_ssm

``ours`` times ``ssm_jax.training.reconstruction``'s jitted train step (forward, 5 x feature MSE, backward, AdamW
with the encoder frozen) and predict step (forward + anomaly maps + Gaussian blur + scores), on random images.
``official`` times the official ``model/mambaad.py`` (read at run time from ``--official-dir``, a copy of
lewandofskee/MambaAD that is never committed here) with mamba_ssm's CUDA selective scan (built from
``--peer-dir``), with the same loss and optimiser, and for inference its forward plus ADer's anomaly map computed on
the GPU (1 - cos, bilinear upsampling, the same Gaussian blur as a convolution). Median of ``--steps`` after
warm-up; prints one table row per phase and appends it as JSON to ``--json`` when given. Run the two in separate
processes: JAX preallocates GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median_rate(fn, batch: int, steps: int, sync) -> tuple[float, float]:
    fn()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return median, batch / median


def compiled_train_step(image_size: int, batch_size: int, scan_impl: str, dtype: str):
    """train.py's jitted MambaAD train step (the official recipe of ``configs/mambaad_common.py``), compiled for one
    batch of random images on all devices: (compiled step, initial state, batch, compile seconds, config, mesh)."""
    import jax

    from configs.mambaad_common import mambaad_config, set_batch_size
    from ssm_jax.training import reconstruction
    from ssm_jax.training.mesh import make_mesh, shard_batch
    from ssm_jax.training.optim import make_optimizer
    from ssm_jax.training.run import build_model

    config = mambaad_config("synthetic", None, epochs=1, image_size=image_size)
    set_batch_size(config, batch_size)
    config.model.scan_impl, config.model.dtype = scan_impl, dtype
    mesh = make_mesh()
    model = build_model(config)
    state = reconstruction.create_state(model, make_optimizer(config.optim, 1000, frozen=reconstruction.FROZEN),
                                        jax.random.PRNGKey(0), image_size, mesh)
    rng = np.random.default_rng(0)
    batch = shard_batch({"image": rng.standard_normal((batch_size, image_size, image_size, 3), dtype=np.float32)},
                        mesh)
    start = time.perf_counter()
    compiled = reconstruction.make_train_step(config.loss, mesh).lower(state, batch).compile()
    return compiled, state, batch, time.perf_counter() - start, config, mesh


def ours(args) -> list[dict]:
    import jax

    from ssm_jax.training import reconstruction
    from ssm_jax.training.mesh import shard_batch

    train_step, state, train_batch, _, config, mesh = compiled_train_step(args.image_size, args.batch_size,
                                                                          args.scan_impl, args.dtype)
    rng = np.random.default_rng(1)
    eval_images = shard_batch({"image": rng.standard_normal((args.eval_batch_size, args.image_size,
                                                             args.image_size, 3), dtype=np.float32)}, mesh)["image"]
    predict_step = reconstruction.make_predict_step(mesh, config.eval.sigma)
    holder = {"state": state, "out": None}

    def train():
        holder["state"], holder["out"] = train_step(holder["state"], train_batch)

    def infer():
        holder["out"] = predict_step(holder["state"], eval_images)

    sync = lambda: jax.block_until_ready(holder["out"])  # noqa: E731
    device = jax.devices()[0].device_kind
    name = f"ours (JAX, scan {args.scan_impl}, {args.dtype})"
    return [dict(impl=name, phase="train", device=device, batch=args.batch_size,
                 **dict(zip(("step_s", "images_per_s"), _median_rate(train, args.batch_size, args.steps, sync)))),
            dict(impl=name, phase="inference", device=device, batch=args.eval_batch_size,
                 **dict(zip(("step_s", "images_per_s"), _median_rate(infer, args.eval_batch_size, args.steps, sync))))]


def _import_official(official_dir: str, peer_dir: str):
    """The official MAMBAAD class with the mamba_ssm CUDA scan, and a timm ResNet34 (features 1-3) as ``net_t``."""
    import types

    import timm
    import torch

    sys.path.insert(0, peer_dir)
    from build import build

    sys.modules["selective_scan_cuda"] = build()
    registry = types.SimpleNamespace(register_module=lambda fn: fn)
    package = types.ModuleType("model")
    package.MODEL = registry
    package.get_model = lambda cfg: timm.create_model("resnet34", pretrained=False, features_only=True,
                                                      out_indices=[1, 2, 3])
    package.__path__ = [os.path.join(official_dir, "model")]
    sys.modules["model"] = package
    import importlib

    module = importlib.import_module("model.mambaad")
    torch.backends.cudnn.benchmark = True
    return module


def official(args) -> list[dict]:
    import torch
    import torch.nn.functional as F

    module = _import_official(args.official_dir, args.peer_dir)
    net = module.MAMBAAD(model_t=None, model_s=dict(depths_decoder=[3, 4, 6, 3], scan_type="hilbert",
                                                    num_direction=8)).cuda()
    net.train()
    params = [p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("net_t.")]
    lr = 0.005 * args.batch_size / 16
    optim = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-4)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device="cuda")
    eval_images = torch.randn(args.eval_batch_size, 3, args.image_size, args.image_size, device="cuda")
    sigma, radius = 4.0, 16
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, device="cuda", dtype=torch.float32) / sigma) ** 2)
    taps = (taps / taps.sum()).view(1, 1, 1, -1)

    def train():
        feats_t, feats_s = net(images)
        loss = sum(5.0 * F.mse_loss(t, s) for t, s in zip(feats_t, feats_s))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    @torch.no_grad()
    def infer():
        feats_t, feats_s = net(eval_images)
        total = 0
        for t, s in zip(feats_t, feats_s):
            a = (1 - F.cosine_similarity(t, s, dim=1))[:, None]
            total = total + F.interpolate(a, size=(args.image_size,) * 2, mode="bilinear", align_corners=True)
        maps = total / 9
        maps = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="reflect"), taps)
        maps = F.conv2d(F.pad(maps, (0, 0, radius, radius), mode="reflect"), taps.transpose(2, 3))
        return maps.flatten(1).max(1).values

    device = torch.cuda.get_device_name()
    name = "official (PyTorch + mamba_ssm CUDA scan, fp32)"
    rows = [dict(impl=name, phase="train", device=device, batch=args.batch_size,
                 **dict(zip(("step_s", "images_per_s"), _median_rate(train, args.batch_size, args.steps,
                                                                      torch.cuda.synchronize))))]
    net.eval()
    rows.append(dict(impl=name, phase="inference", device=device, batch=args.eval_batch_size,
                     **dict(zip(("step_s", "images_per_s"), _median_rate(infer, args.eval_batch_size, args.steps,
                                                                          torch.cuda.synchronize)))))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", choices=["ours", "official"], default="ours")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="training batch (the paper's 16)")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--scan-impl", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--official-dir", help="a copy of lewandofskee/MambaAD (holds model/mambaad.py)")
    parser.add_argument("--peer-dir", default="peer/mamba_ssm", help="../shared/peer/mamba_ssm copied into the repo")
    parser.add_argument("--json", help="append the rows to this JSON-lines file")
    args = parser.parse_args()
    if args.impl == "official" and not args.official_dir:
        parser.error("--impl official needs --official-dir (a copy of lewandofskee/MambaAD)")
    rows = ours(args) if args.impl == "ours" else official(args)
    for r in rows:
        print(f"{r['impl']:<48}{r['phase']:<11}batch {r['batch']:<4}{r['step_s'] * 1e3:>9.1f} ms"
              f"{r['images_per_s']:>9.1f} images/s  ({r['device']})", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
