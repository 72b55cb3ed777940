"""Forward+backward time of a k x k depthwise convolution written three ways, on MambaAD's LSS branch shapes.

    python benchmarks/depthwise_conv.py                      # GPU: batch 16, the four decoder stages, k = 5 and 7
    python benchmarks/depthwise_conv.py --small --repeats 2  # CPU: shrunken shapes, a check that all three run

Why: in MambaAD's train step on an H100 the 7 x 7 depthwise convolution's filter gradient (cuDNN's
``cudnn-conv-bw-filter``) took at least 2.7 ms of 59.5 ms of kernels, against 0.23 ms for the 5 x 5 one's whole
backward (docs/benchmarks.md, "Where MambaAD's step goes"). The forms, all the same function of (x, w):

* ``nhwc``: ``lax.conv_general_dilated`` with ``feature_group_count=C`` in NHWC, as ``nn.Conv`` runs it (the model's);
* ``nchw``: the same convolution on transposed operands (NCHW, OIHW), for which cuDNN may pick other algorithms;
* ``taps``: the sum over the k x k taps of a shifted slice of the padded input times that tap's weights, which XLA
  fuses into elementwise passes and reductions instead of calling cuDNN.

Each row: forward + gradients of x and w (``jax.grad`` of the output's sum), back to back (``batched_time``), and the
largest gradient difference from ``nhwc``. Measured (H100, session 61): in fp32 the taps beat cuDNN's 7 x 7 on the two
large stages (271 against 1,126 us at 64 px) but not inside MambaAD's step, where they were 0-4 % slower
(docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.scan import batched_time, warm_up  # noqa: E402

# (batch, side, channels) of the LSS branches of MambaAD's four decoder stages at 256 px, batch 16.
SHAPES = ((16, 64, 64), (16, 32, 128), (16, 16, 256), (16, 8, 512))
SMALL_SHAPES = ((2, 16, 8), (2, 8, 16))


def nhwc(x, w):
    """x (B, H, W, C), w (k, k, C): the depthwise convolution, 'same' padding, as ``nn.Conv`` lowers it."""
    k, c = w.shape[0], x.shape[-1]
    return jax.lax.conv_general_dilated(x, w[:, :, None, :], (1, 1), [(k // 2, k // 2)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def nchw(x, w):
    """``nhwc`` computed on NCHW / OIHW operands."""
    k, c = w.shape[0], x.shape[-1]
    y = jax.lax.conv_general_dilated(x.transpose(0, 3, 1, 2), w.transpose(2, 0, 1)[:, None], (1, 1),
                                     [(k // 2, k // 2)] * 2, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                     feature_group_count=c)
    return y.transpose(0, 2, 3, 1)


def taps(x, w):
    """``nhwc`` as the sum over taps (i, j) of the padded input shifted by (i, j) times w[i, j]."""
    k, (h, wd) = w.shape[0], x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    return sum(padded[:, i:i + h, j:j + wd, :] * w[i, j] for i in range(k) for j in range(k))


FORMS = {"nhwc": nhwc, "nchw": nchw, "taps": taps}


def gradients(form):
    """Jitted (x, w) -> (dx, dw) of the sum of ``form``'s output: its forward and backward in one program."""
    return jax.jit(jax.grad(lambda x, w: form(x, w).sum(), argnums=(0, 1)))


def inputs(batch: int, side: int, channels: int, k: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, side, side, channels)), dtype)
    w = jnp.asarray(rng.standard_normal((k, k, channels)) / k, dtype)
    return x, w


def main() -> None:
    on_gpu = jax.default_backend() == "gpu"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action=argparse.BooleanOptionalAction, default=not on_gpu)
    parser.add_argument("--kernels", default="5,7")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="calls per back-to-back batch")
    args = parser.parse_args()
    forms = args.forms.split(",")
    unknown = sorted(set(forms) - set(FORMS))
    if unknown:
        raise SystemExit(f"unknown forms {unknown}; valid: {', '.join(FORMS)}")
    print(f"# {jax.devices()[0].device_kind}; {args.dtype}; forward + dx + dw, back to back, us a call")
    print(f"{'shape (B,H,W,C)':<20} {'k':>2} {'form':<6} {'us':>10} {'max |grad - nhwc|':>18}", flush=True)
    compiled = {name: gradients(FORMS[name]) for name in {"nhwc", *forms}}  # one jitted function a form, reused
    for batch, side, channels in SMALL_SHAPES if args.small else SHAPES:
        for k in (int(v) for v in args.kernels.split(",")):
            x, w = inputs(batch, side, channels, k, jnp.dtype(args.dtype))
            reference = compiled["nhwc"](x, w)
            for name in forms:
                fn = compiled[name]
                warm_up(fn, x, w, calls=2, seconds=1.0 if on_gpu else 0.0)
                seconds = batched_time(fn, x, w, calls=args.calls, repeats=args.repeats)
                error = max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - r.astype(jnp.float32))))
                            for g, r in zip(fn(x, w), reference))
                print(f"{f'({batch},{side},{side},{channels})':<20} {k:>2} {name:<6} {seconds * 1e6:10.1f} "
                      f"{error:18.2e}", flush=True)


if __name__ == "__main__":
    main()
