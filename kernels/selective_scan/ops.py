"""``selective_scan_pallas``: the forward and backward kernels joined by ``jax.custom_vjp``.

Under differentiation the forward stores the state every ``chunk`` steps (batch, n_chunks, D, N) as the
residual; the backward restarts each chunk from it. Without differentiation nothing but y (and the last
state, when asked) is written.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels.selective_scan.backward import backward
from kernels.selective_scan.common import make_layout
from kernels.selective_scan.forward import forward

DEFAULT_CHUNK = 16


def _inputs(u, delta, A, B, C, D, z, delta_bias) -> dict:
    """Name -> array, dropping absent optionals; A in float32 (it enters every exponent)."""
    named = dict(u=u, delta=delta, A=A.astype(jnp.float32), B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    return {k: v for k, v in named.items() if v is not None}


def _reduced(grads: dict, key: str, like):
    """Sum a per-batch-row partial gradient over batch, in the dtype of its input (None when absent)."""
    return None if like is None else grads[key].sum(0).astype(like.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10, 11, 12))
def _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, interpret, block_d, chunk):
    lay = make_layout(u, B, A.shape[1], block_d, chunk)
    out = forward(_inputs(u, delta, A, B, C, D, z, delta_bias), lay, delta_softplus=delta_softplus,
                  save="last" if return_last_state else "none", interpret=interpret)
    if return_last_state:
        y, states = out
        return y, states[:, 0]
    return out


def _scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, interpret, block_d,
              chunk):
    lay = make_layout(u, B, A.shape[1], block_d, chunk)
    y, states = forward(_inputs(u, delta, A, B, C, D, z, delta_bias), lay, delta_softplus=delta_softplus,
                        save="chunks", interpret=interpret)
    out = (y, states[:, -1]) if return_last_state else y
    return out, (u, delta, A, B, C, D, z, delta_bias, states)


def _scan_bwd(delta_softplus, return_last_state, interpret, block_d, chunk, residuals, cotangent):
    u, delta, A, B, C, D, z, delta_bias, states = residuals
    lay = make_layout(u, B, A.shape[1], block_d, chunk)
    inputs = _inputs(u, delta, A, B, C, D, z, delta_bias)
    inputs["states"] = states
    if return_last_state:
        dy, dlast = cotangent
        inputs["dy"], inputs["dlast"] = dy.astype(u.dtype), dlast.astype(jnp.float32)
    else:
        inputs["dy"] = cotangent.astype(u.dtype)
    g = backward(inputs, lay, delta_softplus=delta_softplus, interpret=interpret)

    def per_group(partial):  # (batch, L, G * blocks_per_group, N) -> (batch, L, G, N)
        shape = (lay.batch, lay.length, lay.groups, lay.blocks_per_group, lay.d_state)
        return partial.reshape(shape).sum(axis=3)

    return (g["du"], g["ddelta"], _reduced(g, "dA", A), per_group(g["dB"]).astype(B.dtype),
            per_group(g["dC"]).astype(C.dtype), _reduced(g, "dD", D), g.get("dz"),
            _reduced(g, "dbias", delta_bias))


_scan.defvjp(_scan_fwd, _scan_bwd)


def selective_scan_pallas(u, delta, A, B, C, D, z, delta_bias, *, delta_softplus: bool,
                          return_last_state: bool, interpret: bool, block_d: int | None = None,
                          chunk: int = DEFAULT_CHUNK):
    """Selective scan on validated inputs (see ``ssm_jax.ssm.selective_scan``), fused in Pallas.

    Args:
      u, delta: (batch, L, D); A: (D, N); B, C: grouped (batch, L, G, N); D, delta_bias: (D,) or None;
        z: (batch, L, D) or None.
      delta_softplus, return_last_state: as in ``selective_scan``.
      interpret: run the kernels in Pallas interpret mode (CPU, for tests).
      block_d: channels per program (power of two; default min(32, channels per group rounded up)).
      chunk: time steps per checkpoint / unrolled loop body.

    Returns:
      y (batch, L, D) in u's dtype, or (y, last_state (batch, D, N) float32).
    """
    return _scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(return_last_state),
                 bool(interpret), block_d, int(chunk))
