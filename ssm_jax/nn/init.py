"""Initialisers of the Mamba parametrisation (dt projection, S4D-real A), shared by the S6 and SS2D layers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def symmetric_uniform(bound: float):
    """U(-bound, bound): mamba's dt_proj weight init (bound = dt_rank**-0.5) and torch's Linear default."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dt_bias_init(dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4):
    """Bias b with softplus(b) = dt, dt log-uniform in [dt_min, dt_max] (floored): mamba's time-step init."""

    def init(key, shape, dtype=jnp.float32):
        log_dt = jax.random.uniform(key, shape, jnp.float32, math.log(dt_min), math.log(dt_max))
        dt = jnp.maximum(jnp.exp(log_dt), dt_floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)  # inverse of softplus

    return init


def s4d_real_log_init(key, shape, dtype=jnp.float32):
    """A_log with A = -exp(A_log) = -(1, 2, ..., N) along the last axis (S4D-real); deterministic."""
    del key
    return jnp.broadcast_to(jnp.log(jnp.arange(1, shape[-1] + 1, dtype=dtype)), shape)
