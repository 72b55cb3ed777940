"""Registers, spills and barriers of the Pallas scan kernels for an H100/H200 (sm_90), with no GPU: the kernels are
lowered to Triton IR for CUDA, compiled by the ``triton`` package and assembled by its ``ptxas -v``.

    pip install triton        # not a project dependency; needed for the compile step only
    python benchmarks/kernel_resources.py --configs split:16:256:2:2,split:16:256:2:2:8 --shape mamba-768

Configs are those of ``benchmarks/scan_tune.py``. Occupancy follows from the registers: an SM has 65,536, so a
program of w warps at r registers a thread leaves room for 65536 // (32 w r) programs (at most 64 warps and 32
programs). Also counted in the PTX, statically: instructions, ``ex2`` (the exponentials), block barriers
(``bar.sync``) and warp shuffles; a chunk's steps are unrolled into straight-line code, so a count divided by the
unroll is about the count per time step. From the SASS (``nvdisasm``): the instructions of the kernel's main loop
(the walk over chunks: divided by the unroll, what a time step issues) and the opcodes it issues most, and from
those the least time the loop can take over all its warps (``loop_bounds_us``: by issue, and by the special-function
unit's ``MUFU`` instructions); with ``--forward-only`` the forward's kernels summed against the copy floor. This
compile is the ``triton`` package's, not XLA's (run with floating-point contraction off, as XLA's is; XLA also keeps
denormals, which the kernels' inline ``ex2.approx.ftz`` sidesteps), so the counts are close to, not the same as,
what the GPU runs; use it to compare configs, and time the winner with ``scan_tune.py`` on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.scan import MODEL_SHAPES, SHAPES, forward_bytes, make_inputs, times_floor  # noqa: E402
from benchmarks.kernel_configs import config_width, parse_config  # noqa: E402
from kernels.selective_scan import selective_scan_pallas  # noqa: E402
from ssm_jax.ssm.selective_scan import validate_inputs  # noqa: E402

SM_REGISTERS, SM_WARPS, SM_BLOCKS = 65536, 64, 32  # sm_90: per SM
# H100 and H200 SXM: 132 SMs of 4 schedulers, each issuing at most one warp instruction a clock; the special-function
# unit gives 16 results a clock an SM, so a warp's MUFU instruction (ex2, lg2, rcp) holds its scheduler's quarter of
# it for 8 clocks; boost clock 1.98 GHz.
SMS, SCHEDULERS, MUFU_CLOCKS, CLOCK_HZ = 132, 4, 8, 1.98e9


@contextlib.contextmanager
def captured_kernels():
    """Yield a list that fills with (name, num_warps, Triton IR text, Layout or None) for every Pallas kernel lowered
    for a GPU inside the block. Hooks JAX's private Triton lowering (the warps are its caller's local ``num_warps``),
    failing with a clear message where that has moved, and ``pl.pallas_call``, to read the ``lay`` each of this
    project's kernels is built with (matched to its lowering by kernel name, in call order)."""
    try:
        from jax._src.pallas.triton import lowering
        original = lowering.lower_jaxpr_to_triton_module
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"kernel_resources.py: JAX {jax.__version__} has no Pallas Triton lowering where expected "
                         f"(jax._src.pallas.triton.lowering.lower_jaxpr_to_triton_module): {e}") from e
    kernels, layouts, original_call = [], {}, pl.pallas_call

    def pallas_call(kernel, *args, **kwargs):
        layouts.setdefault(kwargs.get("name"), []).append(getattr(kernel, "keywords", {}).get("lay"))
        return original_call(kernel, *args, **kwargs)

    def lower(*args, **kwargs):
        num_warps = sys._getframe(1).f_locals.get("num_warps")
        if num_warps is None:
            raise SystemExit(f"kernel_resources.py: JAX {jax.__version__}'s Pallas lowering no longer has a local "
                             "num_warps where this script reads it")
        result = original(*args, **kwargs)
        text = result.module.operation.get_asm(enable_debug_info=False)
        name = re.search(r"module @(\w+)", text).group(1)
        kernels.append((name, num_warps, text, (layouts.get(name) or [None]).pop(0)))
        return result

    lowering.lower_jaxpr_to_triton_module, pl.pallas_call = lower, pallas_call
    try:
        yield kernels
    finally:
        lowering.lower_jaxpr_to_triton_module, pl.pallas_call = original, original_call


def lowered_kernels(config: dict, shape, dtype=jnp.float32, forward_only: bool = False) -> list:
    """(name, num_warps, Triton IR, Layout) of the forward and backward kernels of one config on one benchmark shape,
    with inputs of ``dtype`` (the state stays float32); ``forward_only``: the forward of inference (no gradient, so
    no checkpoints) alone."""
    args, cotangent = jax.eval_shape(lambda: make_inputs(shape, dtype))

    def forward(*a):
        return selective_scan_pallas(*validate_inputs(*a), delta_softplus=True, return_last_state=False,
                                     interpret=False, **shape.scan_kwargs(), **config)

    def forward_backward(a, ct):
        y, vjp = jax.vjp(forward, *a)
        return y, vjp(ct)

    with captured_kernels() as kernels:
        traced = jax.jit(forward).trace(*args) if forward_only else jax.jit(forward_backward).trace(args, cotangent)
        traced.lower(lowering_platforms=("cuda",))
    return kernels


def parse_ptxas(text: str) -> dict:
    """Registers, spill bytes, stack frame and barriers from ``ptxas -v`` output."""
    def number(pattern):
        found = re.search(pattern, text)
        return int(found.group(1)) if found else 0
    return {"registers": number(r"Used (\d+) registers"), "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads"), "stack": number(r"(\d+) bytes stack frame"),
            "barriers": number(r"used (\d+) barriers")}


def count_ptx(ptx: str) -> dict:
    """Static counts in a kernel's PTX: instructions (what an SM must issue), exponentials (``ex2``, the special
    function unit), and what costs latency between threads: block barriers (``bar.sync``, each a shared-memory
    exchange across warps: a reduction or a layout change) and warp shuffles (``shfl.sync``). The unrolled body
    of a chunk is straight-line code, so a count / the unroll is per time step."""
    return {"instructions": len(re.findall(r"^\s*(?:@!?%\w+\s+)?[a-z][\w.]*[^;\n]*;", ptx, re.M)),
            "ex2": len(re.findall(r"\bex2\.", ptx)),
            "bar_sync": len(re.findall(r"\b(?:bar|barrier)\.sync\b", ptx)),
            "shfl": len(re.findall(r"\bshfl\.sync\b", ptx))}


SASS_LINE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)[^;]*;")
SASS_LABEL = re.compile(r"^(\.L_x_\d+):")
SASS_BRANCH = re.compile(r"\bBRA\b.*`\((\.L_x_\d+)\)")


def main_loop(sass: str) -> Counter:
    """Opcodes (predication and modifiers dropped) of the longest loop in ``nvdisasm`` output: the instructions from
    a label to a later branch back to it. In these kernels that is the walk over chunks, so its count divided by
    the unroll is what one time step issues. Empty when the kernel has no loop."""
    ops, labels, best = [], {}, Counter()
    for line in sass.splitlines():
        label = SASS_LABEL.match(line)
        if label:
            labels[label.group(1)] = len(ops)
            continue
        instruction = SASS_LINE.match(line)
        if not instruction:
            continue
        ops.append(instruction.group(1))
        branch = SASS_BRANCH.search(line)
        if branch and branch.group(1) in labels:
            body = Counter(ops[labels[branch.group(1)]:])
            best = max(best, body, key=lambda c: c.total())
    return best


def loop_bounds_us(loop: Counter, lay, num_warps: int) -> dict | None:
    """Lower bounds, in us, on a step-walking kernel's time from its main loop (``lay.loop_chunks`` chunks of
    ``lay.chunk`` steps a warp): every warp of every program runs ``lay.program_chunks / lay.loop_chunks`` iterations,
    spread evenly over all schedulers, each issuing one instruction a clock (``issue``) and holding the MUFU unit 8
    clocks a MUFU instruction (``mufu``). Reached only if nothing else stalls; loads, stores and the loop's prologue
    are not counted. None without a layout or a loop. Not for the chain kernel, whose loop walks segment summaries
    rather than steps (``main`` skips it)."""
    if lay is None or not loop:
        return None
    per_scheduler = math.prod(lay.grid) * num_warps * lay.program_chunks / lay.loop_chunks / (SMS * SCHEDULERS)
    return {"issue": 1e6 * per_scheduler * loop.total() / CLOCK_HZ,
            "mufu": 1e6 * per_scheduler * MUFU_CLOCKS * loop["MUFU"] / CLOCK_HZ}


def programs_per_sm(registers: int, num_warps: int) -> int:
    """Resident programs an SM can hold, by registers (allocated per warp in units of 256) and by warps."""
    per_warp = -(-registers * 32 // 256) * 256
    return min(SM_REGISTERS // (per_warp * num_warps), SM_WARPS // num_warps, SM_BLOCKS)


def compile_resources(text: str, num_warps: int, workdir: str, sass_to: str | None = None) -> dict:
    """Compile Triton IR for sm_90 with the ``triton`` package and read ``ptxas -v``; ``sass_to``, a file path,
    keeps the kernel's SASS for reading."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
    except ImportError as e:
        raise SystemExit("kernel_resources.py needs the triton package to compile (pip install triton)") from e
    path = os.path.join(workdir, "kernel.ttir")
    with open(path, "w") as f:
        f.write(text)
    compiled = triton.compile(path, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    with open(path + ".ptx", "w") as f:
        f.write(compiled.asm["ptx"])
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    ptxas = next((os.path.join(bin_dir, n) for n in ("ptxas-blackwell", "ptxas")
                  if os.path.exists(os.path.join(bin_dir, n))), "ptxas")
    done = subprocess.run([ptxas, "-arch=sm_90a", "-v", path + ".ptx", "-o", path + ".cubin"], capture_output=True,
                          text=True)
    if done.returncode:
        raise RuntimeError(f"{ptxas} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    nvdisasm = os.path.join(bin_dir, "nvdisasm")
    sass = subprocess.run([nvdisasm if os.path.exists(nvdisasm) else "nvdisasm", path + ".cubin"],
                          capture_output=True, text=True)
    if sass.returncode:
        raise RuntimeError(f"nvdisasm failed: {(sass.stderr.strip().splitlines() or ['?'])[-1]}")
    if sass_to:
        with open(sass_to, "w") as f:
            f.write(sass.stdout)
    return {**parse_ptxas(done.stdout + done.stderr), **count_ptx(compiled.asm["ptx"]), "loop": main_loop(sass.stdout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="split:16:256:2:2")
    parser.add_argument("--shape", default="mamba-768", choices=[s.name for s in SHAPES + MODEL_SHAPES])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="the inputs' dtype (u, delta, B, C, z, y); the state is float32 either way")
    parser.add_argument("--sass-dir", help="write each kernel's SASS here, as <config>_<kernel>.sass")
    parser.add_argument("--forward-only", action="store_true",
                        help="the forward of inference alone (no gradient: no checkpoints, no backward kernels)")
    parser.add_argument("--bandwidth", type=float, default=3000.0,
                        help="copy bandwidth in GB/s for the forward's copy floor (benchmarks/scan.py measures it; "
                             "2,600-3,300 on the lent H200s)")
    args = parser.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "0")  # as XLA compiles Pallas' Triton kernels (Layout.ptx)
    shape = next(s for s in SHAPES + MODEL_SHAPES if s.name == args.shape)
    dtype = jnp.dtype(args.dtype)
    texts = args.configs.split(",")
    width = config_width(texts)
    print(f"{'config':<{width}}{'kernel':<32}{'warps':>6}{'regs':>6}{'spill st/ld B':>15}{'programs/SM':>13}"
          f"{'instrs':>8}{'ex2':>6}{'bar.sync':>10}{'shfl':>6}{'loop':>6}{'issue us':>10}{'MUFU us':>9}"
          "  loop's most issued SASS", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        for text in texts:
            bounds = {}
            for name, num_warps, ir, lay in lowered_kernels(parse_config(text), shape, dtype, args.forward_only):
                sass_to = None
                if args.sass_dir:
                    os.makedirs(args.sass_dir, exist_ok=True)
                    sass_to = os.path.join(args.sass_dir, re.sub(r"[^\w.-]", "_", f"{text}_{name}") + ".sass")
                r = compile_resources(ir, num_warps, workdir, sass_to)
                bound = None if "chain" in name else loop_bounds_us(r["loop"], lay, num_warps)
                if bound:
                    bounds[name] = max(bound.values())
                bound_cells = f"{bound['issue']:10.1f}{bound['mufu']:9.1f}" if bound else " " * 19
                print(f"{text:<{width}}{name:<32}{num_warps:>6}{r['registers']:>6}"
                      f"{r['spill_stores']:>8}/{r['spill_loads']:<6}{programs_per_sm(r['registers'], num_warps):>13}"
                      f"{r['instructions']:>8}{r['ex2']:>6}{r['bar_sync']:>10}{r['shfl']:>6}"
                      f"{r['loop'].total():>6}{bound_cells}  "
                      f"{' '.join(f'{op} {n}' for op, n in r['loop'].most_common(6))}", flush=True)
            if args.forward_only and bounds:
                floor = 1e6 * forward_bytes(shape, dtype) / (args.bandwidth * 1e9)
                total = sum(bounds.values())
                ratio = times_floor(total * 1e-6, shape, dtype, args.bandwidth * 1e9)
                print(f"{text}: the forward's step kernels need at least {total:.1f} us "
                      f"({', '.join(f'{n} {b:.1f}' for n, b in bounds.items())}; the chain and XLA's passes not "
                      f"counted), {ratio:.2f} x the copy floor ({floor:.1f} us at {args.bandwidth:,.0f} GB/s)",
                      flush=True)


if __name__ == "__main__":
    main()
