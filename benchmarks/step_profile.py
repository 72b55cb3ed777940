"""Where a model's train step spends its device time: kernel time per model part, from one JAX profile.

    python benchmarks/step_profile.py                                  # GPU: MemoryMamba-tiny, 224 px, batch 64
    python benchmarks/step_profile.py --dtype bfloat16 --top 30
    python benchmarks/step_profile.py --model mambaad                  # MambaAD's step, 256 px, batch 16
    python benchmarks/step_profile.py --image-size 32 --batch-size 2 --scan-impl sequential   # a quick CPU run

Compiles ``train_throughput.py``'s step (the same config and random batch; with ``--model mambaad``,
``mambaad_throughput.py``'s), runs it ``--warmup`` times, then records
``--steps`` steps under ``jax.profiler.trace`` and reads the profile with ``jax.profiler.ProfileData``. Each kernel
(on the CPU: each thunk) names the HLO instruction it ran (``hlo_op``); the compiled HLO's ``op_name`` metadata of
that instruction names the Flax module and primitive that emitted it. Prints, per step: the wall time, the kernels'
summed time (the GPU idles for the difference, between kernels; on the CPU thunks overlap, so it can be negative),
then the kernel time by part (the module path with stage and block indices dropped, forward or backward), by stage,
and the ``--top`` instructions. A part is where the time goes, not what it costs alone: XLA fuses neighbours, and a
fusion counts for the op it was named after. XLA on a GPU runs most of a step's kernels inside command buffers (CUDA
graphs), which the profile sees as one event each, named for no op; so this script turns them off
(``--xla_gpu_enable_command_buffer=`` added to ``XLA_FLAGS``, unless they already set it or ``--command-buffers`` is
given), which made MemoryMamba-tiny's step 1.7 % slower on an H100 (docs/benchmarks.md, "Where the step's time goes").
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import mambaad_throughput  # noqa: E402
from benchmarks.train_throughput import (add_step_arguments, bench_config, compiled_train_step,  # noqa: E402
                                         scan_patched)

COMMAND_BUFFERS_OFF = "--xla_gpu_enable_command_buffer="
INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*?op_name="([^"]*)"', re.M)
WRAPPER = re.compile(r"^(?:jit|jvp|transpose|vmap|remat|checkpoint|pjit)\((.*)\)$")
# Module names with an index: (pattern, stage label or None, the part's name). A block's index is dropped, so a
# part sums over a stage's blocks; the stage table sums by the label.
INDEXED = (
    (re.compile(r"^stage(\d+)_block\d+$"), "stage{}", "block"),  # MemoryMamba
    (re.compile(r"^layers_up_(\d+)_blocks_\d+$"), "layers_up_{}", "lss"),  # MambaAD's decoder: LSS modules
    (re.compile(r"^layers_up_(\d+)_upsample$"), "layers_up_{}", "upsample"),
    (re.compile(r"^smm_blocks_\d+$"), None, "hss"),  # an LSS module's HSS blocks
    (re.compile(r"^layer(\d+)_\d+$"), "layer{}", "block"),  # a ResNet encoder's residual blocks
)
TOP_LEVEL = ("step", "main", "MemoryMamba", "MambaAD")


def op_names(hlo_text: str) -> dict[str, str]:
    """Instruction name -> its ``op_name`` metadata, for every instruction of compiled HLO text that has one."""
    return dict(INSTRUCTION.findall(hlo_text))


def attribute(op_name: str) -> tuple[str, str, str]:
    """(direction, part, stage) of an ``op_name``: direction is "backward" under a ``transpose(...)`` (the VJP),
    else "forward"; part is the module path below the model with stage/block indices dropped, plus the primitive
    ("ss2d/ss2d.scan_in_place/gather"); stage is the stage of the innermost indexed module (``INDEXED``: "stageN"
    inside a MemoryMamba block, "layers_up_N" in MambaAD's decoder, "layerN" in its encoder), else "-". Ops outside
    the model (the loss, the optimizer update) keep their path without the ``jit(...)`` wrappers."""
    op_name = op_name.split(";")[0]
    direction = "backward" if "transpose(" in op_name else "forward"
    parts, stage = [], "-"
    for component in op_name.split("/"):
        inner = WRAPPER.match(component)
        while inner:  # jit(step), transpose(jvp(MemoryMamba)): keep only a module name inside
            component = inner.group(1)
            inner = WRAPPER.match(component)
        for pattern, label, name in INDEXED:
            indexed = pattern.match(component)
            if indexed:
                stage = label.format(*indexed.groups()) if label else stage
                component = name
                break
        if component and component not in TOP_LEVEL:
            parts.append(component)
    return direction, "/".join(parts) or "(unnamed)", stage


def device_events(profile) -> list[tuple[str, float]]:
    """(hlo_op, microseconds) of every event that names an HLO instruction: the GPU planes' kernels where the
    profile has a device plane, else the host's thunks (CPU backend)."""
    device = [p for p in profile.planes if p.name.startswith("/device:")]
    events = []
    for plane in device or profile.planes:
        for line in plane.lines:
            if line.name in ("XLA Modules", "XLA Ops", "Steps"):  # derived lines: the kernels are on the streams
                continue
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats:
                    events.append((str(stats["hlo_op"]), event.duration_ns / 1e3))
    return events


def table(title: str, totals: dict, steps: int, total_us: float, rows: int | None = None) -> str:
    """One breakdown as text: a row per key, microseconds per step and share of the kernel time, largest first."""
    lines = [f"\n{title}", f"{'us/step':>10}{'share':>8}  part"]
    ordered = sorted(totals.items(), key=lambda kv: -kv[1])
    for key, us in ordered[:rows]:
        lines.append(f"{us / steps:>10.0f}{100 * us / total_us:>7.1f}%  {key}")
    if rows is not None and len(ordered) > rows:
        rest = sum(us for _, us in ordered[rows:])
        lines.append(f"{rest / steps:>10.0f}{100 * rest / total_us:>7.1f}%  ({len(ordered) - rows} more)")
    return "\n".join(lines)


def breakdown(events: list[tuple[str, float]], names: dict[str, str], steps: int, top: int) -> str:
    """The report's tables from the profile's events and the instructions' op names."""
    by_part, by_stage, by_op = (collections.Counter() for _ in range(3))
    for hlo_op, us in events:
        op_name = names.get(hlo_op)
        if op_name is None:
            by_part["(no op_name: " + hlo_op.rstrip("0123456789.") + ")"] += us
            by_op[hlo_op] += us
            continue
        direction, part, stage = attribute(op_name)
        by_part[f"{direction:<9}{part}"] += us
        by_stage[f"{direction:<9}{stage}"] += us
        by_op[f"{hlo_op}  [{op_name.split(';')[0]}]"] += us
    total = sum(us for _, us in events)
    return "\n".join([table("by part", by_part, steps, total, 2 * top), table("by stage", by_stage, steps, total),
                      table(f"top {top} instructions", by_op, steps, total, top)])


def rerun_without_command_buffers(keep: bool) -> None:
    """Start this script again with ``COMMAND_BUFFERS_OFF`` in ``XLA_FLAGS`` (read when XLA starts, so it must be in
    the environment before): unless ``keep``, or ``XLA_FLAGS`` already sets command buffers either way."""
    flags = os.environ.get("XLA_FLAGS", "")
    if keep or "xla_gpu_enable_command_buffer" in flags:
        return
    env = dict(os.environ, XLA_FLAGS=f"{flags} {COMMAND_BUFFERS_OFF}".strip())
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


def progress(started: float, what: str) -> None:
    """One line on stderr, with the seconds since ``started``: where a long run is, also when it is cut off."""
    print(f"[{time.perf_counter() - started:6.0f} s] {what}", file=sys.stderr, flush=True)


# Each model's default image size and batch: the step its benchmarks and papers train.
MODEL_DEFAULTS = {"memorymamba": (224, 64), "mambaad": (256, 16)}


def model_step(args):
    """(compiled train step, state, batch, compile seconds) of ``args.model``, after filling in the image size and
    batch that were not given with the model's (``MODEL_DEFAULTS``), which the report prints."""
    args.image_size = args.image_size or MODEL_DEFAULTS[args.model][0]
    args.batch_size = args.batch_size or MODEL_DEFAULTS[args.model][1]
    if args.model == "mambaad":
        scan_impl = "auto" if args.scan_impl == "none" else args.scan_impl  # "none": scan_patched swaps the scan
        return mambaad_throughput.compiled_train_step(args.image_size, args.batch_size, scan_impl, args.dtype)[:4]
    return compiled_train_step(bench_config(args.size, args), args.batch_size)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="memorymamba", choices=sorted(MODEL_DEFAULTS))
    parser.add_argument("--size", default="tiny", help="MemoryMamba's size")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    add_step_arguments(parser)
    parser.set_defaults(image_size=None, batch_size=None)  # the model's own (MODEL_DEFAULTS)
    parser.add_argument("--trace-dir", default=None, help="keep the profile here (default: a temporary folder)")
    parser.add_argument("--command-buffers", action="store_true",
                        help="leave XLA's command buffers on: the real step's time, its kernels unattributed")
    args = parser.parse_args()
    rerun_without_command_buffers(args.command_buffers)
    started = time.perf_counter()
    with scan_patched(args.scan_impl):
        compiled, state, batch, compile_s = model_step(args)
    progress(started, f"step compiled ({compile_s:.0f} s); {args.warmup} warm-up steps")
    names = op_names(compiled.as_text())
    for _ in range(args.warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="step_profile_")
    progress(started, f"profiling {args.steps} steps into {trace_dir}")
    with jax.profiler.trace(trace_dir):
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        wall = (time.perf_counter() - start) / args.steps
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
    if not paths:
        raise SystemExit(f"step_profile.py: the profiler wrote no *.xplane.pb under {trace_dir}")
    progress(started, f"reading the profile ({os.path.getsize(paths[-1]) / 2**20:.0f} MiB)")
    events = device_events(jax.profiler.ProfileData.from_file(paths[-1]))
    kernel_us = sum(us for _, us in events) / args.steps
    device = jax.devices()[0]
    model = f"MemoryMamba-{args.size}, memory {args.memory}" if args.model == "memorymamba" else "MambaAD"
    print(f"# {device.device_kind} ({device.platform}); {model}, {args.image_size} px, batch {args.batch_size}, "
          f"scan {args.scan_impl}, activations {args.dtype}; {args.steps} profiled steps; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"step wall time {wall * 1e3:.2f} ms (profiler on); kernels {kernel_us / 1e3:.2f} ms a step in "
          f"{len(events) // args.steps} launches; device idle between kernels {(wall * 1e6 - kernel_us) / 1e3:.2f} ms")
    print(breakdown(events, names, args.steps, args.top), flush=True)


if __name__ == "__main__":
    main()
