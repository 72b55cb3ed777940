"""Where an SS2D layer's time goes: the cross-scan gathers, the selective scan and the cross-merge, beside the whole
layer, forward and forward+backward. Issue 9 asks for a fused cross-scan + scan + cross-merge kernel only if the
gathers cost more than the scan; this prints that ratio per shape.

    python benchmarks/ss2d_parts.py --json=$OUT/ss2d_parts.jsonl   # GPU: the shapes below
    python benchmarks/ss2d_parts.py --small                         # CPU: shrunken shapes (a check, not a timing)

Shapes: the four stages of MemoryMamba-tiny at 224 px (VMamba's 4 sweep directions, batch 64) and the four decoder
stages of MambaAD at 256 px (8 Hilbert directions, batch 16). Parts, each jitted on its own, inputs in the layouts
the layer hands over (``ssm_jax.nn.ss2d``):

* ``gathers in``: the (B, H, W, d_inner) map read along the K orders (``cross_scan``) and laid out as the scan's
  (B, L, K * d_inner) channels;
* ``scan``: ``selective_scan`` over those channels with B and C in K groups, D, delta_bias, softplus (``--scan_impl``);
* ``gathers out``: the (B, L, K * d_inner) output back to K sequences, put in place and summed (``cross_merge``);
* ``layer``: the whole SS2D with ``fused_directions=False`` (projections, depthwise conv, the three parts above,
  LayerNorm, gate, out projection);
* ``layer, fused``: the same layer with ``fused_directions=True``, the default since 2026-11-30 (the map kept in
  raster layout, each direction scanned in place through the kernel's ``order`` input: no gathers).

Forward+backward is the forward and the vector-Jacobian product for all float inputs. Each time is the median of
``--steps`` waited calls after ``--warmup`` (``benchmarks.timing``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.rows import append_jsonl, select_shapes  # noqa: E402
from benchmarks.timing import median_step_seconds  # noqa: E402
from ssm_jax.nn.ss2d import SS2D  # noqa: E402
from ssm_jax.ssm import cross_merge, cross_scan, scan_orders, selective_scan  # noqa: E402

PARTS = ("gathers in", "scan", "gathers out", "layer", "layer, fused")


class Shape(NamedTuple):
    name: str
    batch: int
    size: int  # the map is size x size
    d_model: int
    scan_method: str
    directions: int
    d_state: int = 16
    expand: int = 2

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model


SHAPES = (
    *(Shape(f"memorymamba-tiny s{i + 1}", 64, 56 >> i, 96 << i, "sweep", 4) for i in range(4)),
    *(Shape(f"mambaad dec{i + 1}", 16, 8 << i, 512 >> i, "hilbert", 8) for i in range(4)),
)
SMALL_SHAPES = (
    Shape("sweep/small", 2, 8, 8, "sweep", 4),
    Shape("hilbert/small", 2, 8, 8, "hilbert", 8),
)


def part_functions(shape: Shape, scan_impl: str):
    """{part: (function, example inputs)}: the three pieces of an SS2D layer and the layer itself."""
    k, d, n, size = shape.directions, shape.d_inner, shape.d_state, shape.size
    length = size * size
    orders = scan_orders(shape.scan_method, size, size, k)
    keys = jax.random.split(jax.random.PRNGKey(0), 8)

    def gathers_in(x):  # (B, H, W, d) -> (B, L, K*d), channel k*d + i as SS2D.scan lays it out
        return jnp.swapaxes(cross_scan(x, orders), 1, 2).reshape(shape.batch, length, k * d)

    def scan(u, delta, A, B, C, D, delta_bias):
        return selective_scan(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=True, impl=scan_impl)

    def gathers_out(y):  # (B, L, K*d) -> (B, H, W, d), the K directions summed
        return cross_merge(jnp.swapaxes(y.reshape(shape.batch, length, k, d), 1, 2), orders, size, size)

    layer_module = SS2D(shape.d_model, d_state=n, expand=shape.expand, scan_method=shape.scan_method,
                        directions=k, scan_impl=scan_impl, fused_directions=False)
    image = jax.random.normal(keys[0], (shape.batch, size, size, shape.d_model))
    params = layer_module.init(keys[1], image)

    bl = (shape.batch, length, k * d)
    scan_inputs = (jax.random.normal(keys[2], bl), 0.5 * jax.random.normal(keys[3], bl),
                   -jnp.exp(jax.random.normal(keys[4], (k * d, n))),
                   jax.random.normal(keys[5], (shape.batch, length, k, n)),
                   jax.random.normal(keys[6], (shape.batch, length, k, n)), jnp.ones((k * d,)),
                   jax.random.normal(keys[7], (k * d,)))
    fused_module = layer_module.clone(fused_directions=True)
    return {
        "gathers in": (gathers_in, (jax.random.normal(keys[2], (shape.batch, size, size, d)),)),
        "scan": (scan, scan_inputs),
        "gathers out": (gathers_out, (jax.random.normal(keys[3], bl),)),
        "layer": (lambda p, x: layer_module.apply(p, x), (params, image)),
        "layer, fused": (lambda p, x: fused_module.apply(p, x), (params, image)),
    }


def measure(fn, args, steps: int, warmup: int) -> dict:
    """Forward and forward+backward seconds of ``fn(*args)``."""
    forward = jax.jit(fn)
    out = jax.eval_shape(fn, *args)
    cotangent = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), out)
    forward_backward = jax.jit(lambda a, ct: jax.vjp(fn, *a)[1](ct))
    result = {}
    for name, step in (("fwd_s", lambda: forward(*args)), ("fwd_bwd_s", lambda: forward_backward(args, cotangent))):
        held = []
        result[name] = median_step_seconds(lambda: held.append(step()),
                                           lambda: (jax.block_until_ready(held), held.clear()), steps=steps,
                                           warmup=warmup)
    return result


def run(shapes, scan_impl: str, steps: int, warmup: int, json_path: str | None) -> list[dict]:
    """Measure every part of every shape, printing a row as each finishes; returns the rows."""
    print(f"{'shape':<22}{'part':<14}{'fwd ms':>9}{'f+b ms':>9}{'f+b share':>11}", flush=True)
    rows = []
    for shape in shapes:
        parts = part_functions(shape, scan_impl)
        times = {part: measure(fn, args, steps, warmup) for part, (fn, args) in parts.items()}
        layer = times["layer"]["fwd_bwd_s"]
        for part in PARTS:
            row = {"shape": shape.name, "part": part, "scan_impl": scan_impl, "batch": shape.batch,
                   "size": shape.size, "d_model": shape.d_model, "directions": shape.directions, **times[part],
                   "share_of_layer_fwd_bwd": times[part]["fwd_bwd_s"] / layer}
            rows.append(row)
            print(f"{shape.name:<22}{part:<14}{1e3 * row['fwd_s']:9.3f}{1e3 * row['fwd_bwd_s']:9.3f}"
                  f"{row['share_of_layer_fwd_bwd']:11.2f}", flush=True)
            append_jsonl(json_path, row)
        gathers = times["gathers in"]["fwd_bwd_s"] + times["gathers out"]["fwd_bwd_s"]
        print(f"{shape.name:<22}gathers / scan, f+b: {gathers / times['scan']['fwd_bwd_s']:.2f}; fused / gathered "
              f"layer, f+b: {times['layer, fused']['fwd_bwd_s'] / layer:.2f}", flush=True)
    return rows


def main() -> None:
    on_gpu = jax.default_backend() == "gpu"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action=argparse.BooleanOptionalAction, default=not on_gpu,
                        help="shrunken shapes (default when no GPU)")
    parser.add_argument("--shapes", help="comma-separated shape names (default: all)")
    parser.add_argument("--scan_impl", default="auto")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", help="append one JSON line per row to this file")
    args = parser.parse_args()
    shapes = select_shapes(SMALL_SHAPES if args.small else SHAPES, args.shapes)
    print(f"# {jax.devices()[0].device_kind} ({jax.default_backend()}), float32, scan {args.scan_impl}, "
          f"median of {args.steps} after {args.warmup}", flush=True)
    run(shapes, args.scan_impl, args.steps, args.warmup, args.json)


if __name__ == "__main__":
    main()
