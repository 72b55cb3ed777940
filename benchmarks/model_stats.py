"""Parameters and FLOPs of a model at its paper resolution, next to the paper's numbers.

    python benchmarks/model_stats.py mambaad            # 256 px; the paper: 25.7 M parameters, 8.3 GFLOPs
    python benchmarks/model_stats.py mambaad --image-size 224

FLOPs are counted from the forward pass's jaxpr (one image, inference): multiply-accumulates of every matrix
product and convolution (``dot_general``, ``conv_general_dilated``, inside jit/scan/remat bodies too, times the
scan length), reported as G(MAC) -- the convention of fvcore, which the MambaAD paper uses. fvcore has no counter
for mamba_ssm's selective-scan CUDA op, so the paper's figure leaves the scan out; it is printed separately here
(its recurrence costs about 9 L D N flops per direction: exp, two multiply-adds and the C contraction).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ssm_jax.models.mambaad import build_mambaad, mambaad_model_config  # noqa: E402

PAPER = {"mambaad": {"params_m": 25.7, "gflops": 8.3, "image_size": 256}}


def _macs(eqn) -> float:
    if eqn.primitive.name == "dot_general":
        (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        contracted = np.prod([lhs[i] for i in lc])
        return float(np.prod(eqn.outvars[0].aval.shape)) * float(contracted)
    if eqn.primitive.name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
        per_output = np.prod([rhs[i] for i in spec[1:]])
        return float(np.prod(eqn.outvars[0].aval.shape)) * float(per_output)
    return 0.0


def count_macs(jaxpr, multiplier: float = 1.0) -> float:
    """Multiply-accumulates of the dense ops in ``jaxpr``, recursing into sub-jaxprs (scan bodies times length)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        total += multiplier * _macs(eqn)
        inner = multiplier * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    total += count_macs(sub.jaxpr, inner)
                elif hasattr(sub, "eqns"):
                    total += count_macs(sub, inner)
    return total


def scan_flops(model, image_size: int) -> float:
    """9 L D N per direction for every SS2D of the decoder (D = expanded channels)."""
    total, size = 0.0, image_size // 32
    for i, (dim, depth) in enumerate(zip(model.decoder_dims, model.decoder_depths)):
        side = size * 2 ** i
        total += depth * model.directions * 9 * side * side * int(model.ssm_ratio * dim) * model.d_state
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(PAPER))
    parser.add_argument("--image-size", type=int, default=None)
    args = parser.parse_args()
    paper = PAPER[args.model]
    size = args.image_size or paper["image_size"]
    model = build_mambaad(mambaad_model_config(scan_impl="sequential"))
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    counts = {k: sum(v.size for v in jax.tree.leaves(t)) for k, t in variables["params"].items()}
    jaxpr = jax.make_jaxpr(lambda v, im: model.apply(v, im))(variables, x)
    gmacs = count_macs(jaxpr.jaxpr) / 1e9
    print(f"# {args.model} at {size} px, one image, inference")
    print(f"{'':<34}{'ours':>10}{'paper':>10}")
    print(f"{'parameters (M)':<34}{sum(counts.values()) / 1e6:>10.2f}{paper['params_m']:>10.1f}")
    for k, n in counts.items():
        print(f"{'  of which ' + k:<34}{n / 1e6:>10.2f}")
    print(f"{'GFLOPs (GMACs, dense ops, fvcore)':<34}{gmacs:>10.2f}{paper['gflops']:>10.1f}")
    print(f"{'selective scan GFLOPs (not above)':<34}{scan_flops(model, size) / 1e9:>10.2f}")


if __name__ == "__main__":
    main()
