"""MambaMixer: the 1-D selective SSM (S6) layer of mamba_ssm's ``Mamba``, with its parameter names."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssm_jax.nn.init import dt_bias_init, s4d_real_log_init, symmetric_uniform
from ssm_jax.nn.split_dense import SplitDense
from ssm_jax.nn.ss2d import resolve_dt_rank
from ssm_jax.ssm import selective_scan


class MambaMixer(nn.Module):
    """(B, L, d_model) -> (B, L, d_model).

    in_proj -> (x, z); x <- SiLU(causal depthwise conv1d(x)); x_proj -> (dt, B, C); delta = dt_proj(dt)
    (softplus in the scan); y = selective_scan(x, delta, -exp(A_log), B, C, D, gate z); out_proj.
    Names as mamba_ssm: in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj (Dense kernels are torch weights
    transposed; conv1d kernel (d_conv, 1, d_inner) is torch's (d_inner, 1, d_conv) transposed).
    """

    d_model: int
    d_state: int = 16
    d_conv: int = 4
    expand: float = 2  # d_inner = int(expand * d_model), as mamba_ssm
    dt_rank: int | str = "auto"
    scan_impl: str = "auto"
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"MambaMixer: input has shape {tuple(x.shape)}, expected (batch, length, "
                             f"d_model={self.d_model}); a 2-D map goes through SS2D, or is flattened to a sequence")
        d, n = int(self.expand * self.d_model), self.d_state
        r = resolve_dt_rank(self.dt_rank, self.d_model)
        x, z = SplitDense((d, d), dtype=self.dtype, name="in_proj")(x)
        x = nn.Conv(d, (self.d_conv,), padding=[(self.d_conv - 1, 0)], feature_group_count=d, dtype=self.dtype,
                    name="conv1d")(x)
        x = nn.silu(x)
        dt, B, C = jnp.split(nn.Dense(r + 2 * n, use_bias=False, dtype=self.dtype, name="x_proj")(x),
                             [r, r + n], axis=-1)
        delta = nn.Dense(d, dtype=self.dtype, kernel_init=symmetric_uniform(r ** -0.5),
                         bias_init=dt_bias_init(self.dt_min, self.dt_max), name="dt_proj")(dt)
        A = -jnp.exp(self.param("A_log", s4d_real_log_init, (d, n)))
        D = self.param("D", nn.initializers.ones, (d,), jnp.float32)
        y = selective_scan(x, delta, A, B, C, D=D, z=z, delta_softplus=True, impl=self.scan_impl)
        return nn.Dense(self.d_model, use_bias=False, dtype=self.dtype, name="out_proj")(y)
