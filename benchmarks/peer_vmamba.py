"""Training throughput of the official VMamba-T (PyTorch, mamba_ssm's CUDA selective scan) next to this project's
MemoryMamba-tiny with its memory modules off (JAX), on the same GPU in one invocation (issue 10).

    python3 benchmarks/peer_vmamba.py --json=peer_vmamba.jsonl            # GPU: 224 px, batch 64, both sides
    XLA_FLAGS=--xla_backend_optimization_level=0 python3 benchmarks/peer_vmamba.py --jax_only \\
        --image_size 32 --batch 2 --steps 1 --warmup 0     # CPU check of the JAX side (the flag: faster compiles)
    python3 benchmarks/peer_vmamba.py --image_size 32 --batch 2 --steps 1 --warmup 0 --pytorch_only \\
        --torch_device cpu    # CPU smoke test of the official model with its pure-PyTorch scan (needs triton)

Each step, on both sides: float32 parameters and activations, a batch of random images already on the device,
forward, cross entropy over 1000 classes, backward, AdamW update (the project's settings, configs.common), with
stochastic depth at VMamba-T's rate 0.2 in training mode. Step time is the median of ``--steps`` steps, each
waited for (torch.cuda.synchronize / jax.block_until_ready), after ``--warmup`` untimed steps
(``benchmarks.timing``). Matmuls and convolutions may use TF32 on both sides (``--tf32 on``: JAX's default on
GPU, and PyTorch set to match), or neither (``--tf32 off``); PyTorch autotunes convolutions (cudnn.benchmark, as
VMamba's training script does), as XLA does. Each side runs in its own Python process, one after the other
(JAX preallocates GPU memory; each side gets the whole GPU). Prints a table with both rows and the JAX / PyTorch
images/s ratio; appends one JSON object per side to ``--json``.

PyTorch side: ``vanilla_vmamba_tiny()`` of the official ``classification/models/vmamba.py`` of MzeroMiko/VMamba at
commit 2ed52ea (2025-03-07), the config of ``classification/configs/vssm/vmambav0_tiny_224.yaml``: depths
(2, 2, 9, 2), dims 96..768, d_state 16, ssm_ratio 2, dt_rank auto, forward_type v0, no MLP, drop path 0.2,
1000 classes; 22,893,448 parameters. Its v0 SS2D calls mamba_ssm's ``selective_scan_cuda`` (backend "mamba";
VMamba's own warning that ``selective_scan_cuda_oflex`` is missing does not concern v0). The kernel is built or
loaded by ``--mamba_ssm``/build.py (peer/mamba_ssm, see its README) into /tmp/ssbuild: about 2 minutes the first
time. The official sources are never committed: ``--vmamba`` (default peer/vmamba, git-ignored) must hold that
commit's ``classification/models/``, staged where GitHub can be reached, for instance

    git clone https://github.com/MzeroMiko/VMamba /tmp/VMamba && git -C /tmp/VMamba checkout 2ed52ea
    mkdir -p peer/vmamba/classification && cp -r /tmp/VMamba/classification/models peer/vmamba/classification/

(peer/vmamba/stage.sh does the same from a bare mirror). The official code needs triton at import
(csm_triton.py decorates its kernels with ``@triton.jit``) and imports timm, einops and fvcore at module level,
of which v0 training uses only timm's DropPath and trunc_normal_: where those packages are missing, minimal
stand-ins in ``<vmamba>/shims/`` (timm/models/layers, einops, fvcore/nn) are found at the end of sys.path, so
installed packages win. If the PyTorch side cannot run (no sources, no GPU, no kernel) its row says what was
expected and where, and the JAX side is still measured.

JAX side: MemoryMamba-tiny with ``use_coarse_memory``, ``use_fine_memory`` and ``use_fusion`` off, the
VMamba-v0-like backbone (same depths, dims, d_state 16, expand 2, 4-direction SS2D; each block adds MemoryMamba's
linear in/out), 1000 classes, drop_path_rate 0.2, timed by ``train_throughput.time_train_step`` (train.py's
jitted train step) on one device with ``--scan_impl`` (default auto: the Pallas kernel on GPU).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.timing import median_step_seconds  # noqa: E402

VMAMBA_COMMIT = "2ed52ead062a51a64521ed3871d52914bf532876"
NUM_CLASSES, DROP_PATH_RATE = 1000, 0.2  # VMamba-T v0 as vanilla_vmamba_tiny() builds it; the JAX side matches
MODELS = {"pytorch": "VMamba-T v0 (official)", "jax": "MemoryMamba-tiny, memory off"}


class PeerUnavailable(RuntimeError):
    """The PyTorch side cannot run here; the message says what was expected, and where."""


def _load_kernel(mamba_ssm_dir: str):
    """mamba_ssm's ``selective_scan_cuda`` extension, built or loaded (cached in /tmp/ssbuild) by its build.py."""
    path = os.path.join(mamba_ssm_dir, "build.py")
    if not os.path.isfile(path):
        raise PeerUnavailable(f"mamba_ssm's build script not found at {path}; expected the selective-scan CUDA "
                              f"sources of peer/mamba_ssm there (see peer/mamba_ssm/README.md)")
    spec = importlib.util.spec_from_file_location("mamba_ssm_build", path)
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    try:
        return builder.build()
    except Exception as err:  # compiler, linker and loader failures come as several exception types
        raise PeerUnavailable(f"building or loading selective_scan_cuda with {path} (into /tmp/ssbuild) failed: "
                              f"{type(err).__name__}: {err}") from err


def load_vmamba(vmamba_dir: str, mamba_ssm_dir: str, device: str):
    """The official ``vmamba`` module, imported from ``vmamba_dir``/classification/models as package
    ``vmamba_official`` (so its relative imports resolve and its ``__init__`` is not run). On "cuda" mamba_ssm's
    kernel is registered as ``selective_scan_cuda`` first, and VMamba must have picked it up; on "cpu" VMamba falls
    back to its pure-PyTorch scan. Raises PeerUnavailable with what is missing and where."""
    models = os.path.join(vmamba_dir, "classification", "models")
    if not os.path.isfile(os.path.join(models, "vmamba.py")):
        raise PeerUnavailable(f"VMamba sources not found at {models}/vmamba.py; expected classification/models/ of "
                              f"MzeroMiko/VMamba at commit {VMAMBA_COMMIT[:7]} there (see this file's docstring "
                              f"for how to stage them)")
    try:
        import torch
    except ImportError as err:
        raise PeerUnavailable(f"PyTorch is not importable here ({err})") from None
    if importlib.util.find_spec("triton") is None:
        raise PeerUnavailable(f"triton is not installed: the official {models}/csm_triton.py defines Triton "
                              f"kernels at import time")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise PeerUnavailable("PyTorch sees no CUDA GPU; the official side runs mamba_ssm's CUDA kernel "
                                  "(--torch_device cpu runs VMamba's pure-PyTorch scan instead, as a smoke test)")
        sys.modules["selective_scan_cuda"] = _load_kernel(mamba_ssm_dir)
    sys.path.append(os.path.join(vmamba_dir, "shims"))
    package = types.ModuleType("vmamba_official")
    package.__path__ = [models]
    sys.modules["vmamba_official"] = package
    try:
        module = importlib.import_module("vmamba_official.vmamba")
    except ImportError as err:
        raise PeerUnavailable(f"importing the official {models}/vmamba.py failed ({err}); where timm, einops or "
                              f"fvcore are not installed it expects the stand-ins in {vmamba_dir}/shims "
                              f"(see this file's docstring)") from None
    if device == "cuda" and not sys.modules["vmamba_official.csms6s"].WITH_SELECTIVESCAN_MAMBA:
        raise PeerUnavailable(f"VMamba's {models}/csms6s.py did not import selective_scan_cuda from "
                              f"{mamba_ssm_dir}; without it VMamba would time its slow pure-PyTorch scan")
    return module


def measure_pytorch(args) -> dict:
    """The official VMamba-T v0 train step (module docstring), timed on ``--torch_device``."""
    module = load_vmamba(args.vmamba, args.mamba_ssm, args.torch_device)
    if args.torch_device == "cuda":
        print("# VMamba's warning about selective_scan_cuda_oflex does not apply: v0 calls selective_scan_cuda "
              "(backend 'mamba'), which it imported", flush=True)
    import torch
    import torch.nn.functional as F

    from configs.common import optim_config

    torch.set_float32_matmul_precision("high" if args.tf32 == "on" else "highest")
    torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
    torch.backends.cudnn.benchmark = True  # as the official classification/main.py trains
    torch.manual_seed(0)
    device = torch.device(args.torch_device)
    model = module.vanilla_vmamba_tiny().to(device).train()
    optim = optim_config()
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=(optim.b1, optim.b2), eps=optim.eps,
                                  weight_decay=optim.weight_decay)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, model.num_classes, (args.batch,), device=device)

    def step():
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = median_step_seconds(step, torch.cuda.synchronize if cuda else lambda: None, args.steps, args.warmup)
    drop_path = max(m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath")
    return {"framework": f"PyTorch {torch.__version__.split('+')[0]}",
            "scan": "mamba_ssm selective_scan_cuda" if cuda else "VMamba selective_scan_torch",
            "device": torch.cuda.get_device_name() if cuda else "cpu", "num_classes": model.num_classes,
            "drop_path_rate": round(drop_path, 6), "params": sum(p.numel() for p in model.parameters()),
            "step_s": seconds, "images_per_s": args.batch / seconds,
            "memory": f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (torch peak allocated)" if cuda
            else "n/a"}


def measure_jax(args) -> dict:
    """MemoryMamba-tiny with its memory modules off, train.py's train step on one device (module docstring)."""
    import jax

    if args.tf32 == "off":
        jax.config.update("jax_default_matmul_precision", "highest")
    from benchmarks.train_throughput import time_train_step
    from configs.memorymamba_common import apply_size, memorymamba_config
    from ssm_jax.ssm.selective_scan import resolve_impl

    config = memorymamba_config("elpv", NUM_CLASSES, None, image_size=args.image_size)
    apply_size(config, "tiny")
    config.model.update(scan_impl=args.scan_impl, dtype="float32", use_coarse_memory=False, use_fine_memory=False,
                        use_fusion=False, drop_path_rate=DROP_PATH_RATE)
    device = jax.devices()[0]
    return {"framework": f"JAX {jax.__version__}", "scan": resolve_impl(args.scan_impl),
            "device": device.device_kind, "num_classes": config.model.num_classes,
            "drop_path_rate": config.model.drop_path_rate,
            **time_train_step(config, args.batch, args.steps, args.warmup, devices=[device])}


def jax_over_pytorch(rows: list[dict]) -> float | None:
    """JAX images/s divided by PyTorch images/s, or None unless both sides were measured."""
    rate = {r["side"]: r.get("images_per_s") for r in rows}
    return rate["jax"] / rate["pytorch"] if rate.get("jax") and rate.get("pytorch") else None


def format_table(rows: list[dict], args) -> str:
    """The printed table: a header line, one line per side (or why it was not measured), and the ratio."""
    lines = [f"# {args.image_size} px, batch {args.batch}, float32 (TF32 {args.tf32}), forward + backward + AdamW, "
             f"median of {args.steps} steps after {args.warmup} warm-up",
             f"{'model':<30}{'framework, scan':<48}{'params':>12}{'step (ms)':>11}{'images/s':>10}  device, memory"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<30}not measured: {r['error']}")
            continue
        lines.append(f"{r['model']:<30}{r['framework'] + ', ' + r['scan']:<48}{r['params']:>12,}"
                     f"{r['step_s'] * 1e3:>11.1f}{r['images_per_s']:>10.1f}  {r['device']}, {r['memory']}")
    ratio = jax_over_pytorch(rows)
    if ratio is not None:
        lines.append(f"# JAX / PyTorch images/s: {ratio:.2f}")
    return "\n".join(lines)


def run_side(side: str, argv: list[str]) -> dict:
    """This script for one side in a fresh Python process (its output passes through): its row, or a row with
    ``error`` if it stopped before writing one."""
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "row.json")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, f"--side={side}",
                               f"--result={result}"])
        if os.path.exists(result):
            with open(result) as f:
                return json.load(f)
    return {"side": side, "model": MODELS[side],
            "error": f"its process exited with status {proc.returncode} before a result; see its output above"}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (after JAX's compilation)")
    parser.add_argument("--scan_impl", default="auto", help="the JAX side's selective scan implementation")
    parser.add_argument("--tf32", choices=["on", "off"], default="on",
                        help="on: TF32 matmuls and convolutions on both sides (JAX's GPU default); off: neither")
    parser.add_argument("--vmamba", default=os.path.join(ROOT, "peer", "vmamba"),
                        help="folder holding the official classification/models/ (and shims/)")
    parser.add_argument("--mamba_ssm", default=os.path.join(ROOT, "peer", "mamba_ssm"),
                        help="folder holding mamba_ssm's build.py for selective_scan_cuda")
    parser.add_argument("--torch_device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: VMamba's pure-PyTorch scan, a smoke test of the official model without a GPU")
    parser.add_argument("--json", help="append one JSON object per side to this file")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--jax_only", action="store_true")
    only.add_argument("--pytorch_only", action="store_true")
    parser.add_argument("--side", choices=sorted(MODELS), help=argparse.SUPPRESS)  # set for the child processes
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("expected --steps >= 1, --warmup >= 0 and --batch >= 1")
    return args


def main():
    args = parse_args()
    if args.side:  # a child: measure one side, write its row
        print(f"# {args.side}: {MODELS[args.side]}", flush=True)
        row = {"side": args.side, "model": MODELS[args.side], "batch": args.batch, "image_size": args.image_size,
               "steps": args.steps, "warmup": args.warmup, "tf32": args.tf32}
        try:
            row.update(measure_pytorch(args) if args.side == "pytorch" else measure_jax(args))
        except PeerUnavailable as err:
            print(f"# PyTorch side not measured: {err}", flush=True)
            row["error"] = str(err)
        with open(args.result, "w") as f:
            json.dump(row, f)
        return
    sides = ["pytorch"] * (not args.jax_only) + ["jax"] * (not args.pytorch_only)
    rows = [run_side(side, sys.argv[1:]) for side in sides]
    ratio = jax_over_pytorch(rows)
    if ratio is not None:
        rows[-1]["jax_over_pytorch"] = ratio
    print(format_table(rows, args), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
