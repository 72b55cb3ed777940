"""SS2D: VMamba's 2-D selective-scan block, with configurable scan orders.

Parameter names and shapes follow VMamba's ``SS2D`` state dict so a converter only transposes:
``in_proj``, ``conv2d``, ``x_proj_weight`` (K, d_inner, dt_rank+2N) [torch: (K, dt_rank+2N, d_inner)],
``dt_projs_weight`` (K, dt_rank, d_inner) [torch: (K, d_inner, dt_rank)], ``dt_projs_bias`` (K, d_inner),
``A_logs`` (K*d_inner, N), ``Ds`` (K*d_inner,), ``out_norm``, ``out_proj``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from ssm_jax.nn.init import dt_bias_init, s4d_real_log_init, symmetric_uniform
from ssm_jax.nn.split_dense import SplitDense
from ssm_jax.ssm import cross_merge, cross_scan, scan_orders, selective_scan
from ssm_jax.ssm.scan_orders import DIRECTIONS


def resolve_dt_rank(dt_rank, d_model: int) -> int:
    """mamba's ``dt_rank="auto"`` = ceil(d_model / 16); an int is taken as is."""
    return math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)


class SS2D(nn.Module):
    """(B, H, W, d_model) -> (B, H, W, d_model).

    in_proj -> (x, z); x <- SiLU(depthwise conv(x)); x is read along K scan orders (``scan_method``,
    ``directions``; the default "sweep" x 4 is VMamba's cross-scan), each direction with its own x_proj/dt_proj/A/D;
    the K scans run as ONE ``selective_scan`` over K*d_inner channels with B/C in K groups (the layout the fused
    kernel takes); the K outputs are put back in place and summed; LayerNorm; * SiLU(z); out_proj.
    With ``fused_directions`` the map stays in raster layout: the K directions are scanned where the map lies
    (``selective_scan(order=)``; the Pallas kernel visits each direction's positions in place) and summed, with
    no gathered copies in or out; same outputs and parameters. On by default: forward+backward of the layer 4%
    faster at MemoryMamba-tiny's first stage and 1% at MambaAD's last decoder stage on an H200
    (``benchmarks/ss2d_parts.py``, 2026-11-30); ``False`` gives the gathered path.
    Parameters are float32; ``dtype`` is the activation dtype. ``out_norm`` uses torch's LayerNorm epsilon (1e-5),
    as VMamba and MambaAD do, so converted weights give the same outputs; ``dense_init`` initialises in/out_proj
    (MambaAD uses a truncated normal with std 0.02) and ``conv_init`` the depthwise conv (MambaAD: He normal over
    the kernel's k x k taps).
    """

    d_model: int
    d_state: int = 16
    expand: int = 2
    dt_rank: int | str = "auto"
    d_conv: int = 3
    scan_method: str = "sweep"
    directions: int = 4
    scan_impl: str = "auto"
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dense_init: Callable = nn.linear.default_kernel_init
    conv_init: Callable = nn.linear.default_kernel_init
    dtype: Any = jnp.float32
    fused_directions: bool = True

    def setup(self):
        if self.directions not in DIRECTIONS:  # before the parameters: their shapes depend on it
            raise ValueError(f"SS2D: directions={self.directions!r}; valid: {', '.join(map(str, DIRECTIONS))}")
        d, k, n = int(self.expand * self.d_model), self.directions, self.d_state
        r = resolve_dt_rank(self.dt_rank, self.d_model)
        self.in_proj = SplitDense((d, d), kernel_init=self.dense_init, dtype=self.dtype)
        self.conv2d = nn.Conv(d, (self.d_conv, self.d_conv), padding="SAME", feature_group_count=d,
                              kernel_init=self.conv_init, dtype=self.dtype)
        self.x_proj_weight = self.param("x_proj_weight", symmetric_uniform(d ** -0.5), (k, d, r + 2 * n))
        self.dt_projs_weight = self.param("dt_projs_weight", symmetric_uniform(r ** -0.5), (k, r, d))
        self.dt_projs_bias = self.param("dt_projs_bias", dt_bias_init(self.dt_min, self.dt_max), (k, d))
        self.A_logs = self.param("A_logs", s4d_real_log_init, (k * d, n))
        self.Ds = self.param("Ds", nn.initializers.ones, (k * d,), jnp.float32)
        self.out_norm = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)
        self.out_proj = nn.Dense(self.d_model, use_bias=False, kernel_init=self.dense_init, dtype=self.dtype)

    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != self.d_model:
            raise ValueError(f"SS2D: x has shape {x.shape}; expected (batch, height, width, d_model={self.d_model})")
        _, height, width, _ = x.shape
        x, z = self.in_proj(x)
        x = nn.silu(self.conv2d(x))
        orders = scan_orders(self.scan_method, height, width, self.directions)
        if self.fused_directions:
            y = self.scan_in_place(x.reshape(x.shape[0], height * width, -1), orders).reshape(x.shape)
        else:
            y = cross_merge(self.scan(cross_scan(x, orders)), orders, height, width)
        return self.out_proj(self.out_norm(y) * nn.silu(z))

    def scan(self, xs):
        """(B, K, L, d_inner) sequences -> (B, K, L, d_inner): direction k with its own parameters, one scan call."""
        batch, k, length, d = xs.shape
        r = self.dt_projs_weight.shape[1]
        x_dbl = jnp.einsum("bkld,kdc->bklc", xs, self.x_proj_weight.astype(xs.dtype))
        dts, Bs, Cs = jnp.split(x_dbl, [r, r + self.d_state], axis=-1)
        dts = jnp.einsum("bklr,krd->bkld", dts, self.dt_projs_weight.astype(xs.dtype))

        def channels(t):  # (B, K, L, X) -> (B, L, K*X), channel k*X + x: direction-major
            return jnp.swapaxes(t, 1, 2).reshape(batch, length, -1)

        y = selective_scan(channels(xs), channels(dts), -jnp.exp(self.A_logs), jnp.swapaxes(Bs, 1, 2),
                           jnp.swapaxes(Cs, 1, 2), D=self.Ds, delta_bias=self.dt_projs_bias.reshape(-1),
                           delta_softplus=True, impl=self.scan_impl)
        return jnp.swapaxes(y.reshape(batch, length, k, d), 1, 2)

    def scan_in_place(self, x, orders):
        """(B, L, d_inner) map in raster order -> (B, L, d_inner): each direction k projected and scanned in the
        order orders[k] where the map lies, the K outputs summed. The K directions read the one map x (a u shared
        by the scan's groups) and the scan sums their outputs (``sum_groups``), so neither x nor y's gradient is
        copied K-fold: on MemoryMamba-tiny's train step (224 px, batch 64, float32; lent H100,
        ``benchmarks/step_profile.py``) the copy of x took 1.4 ms and the broadcast of y's gradient 1.6 ms."""
        batch, length, d = x.shape
        k, r = orders.shape[0], self.dt_projs_weight.shape[1]
        x_dbl = jnp.einsum("bld,kdc->blkc", x, self.x_proj_weight.astype(x.dtype))
        dts, Bs, Cs = jnp.split(x_dbl, [r, r + self.d_state], axis=-1)
        dts = jnp.einsum("blkr,krd->blkd", dts, self.dt_projs_weight.astype(x.dtype)).reshape(batch, length, k * d)
        return selective_scan(x, dts, -jnp.exp(self.A_logs), Bs, Cs, D=self.Ds,
                              delta_bias=self.dt_projs_bias.reshape(-1), delta_softplus=True, impl=self.scan_impl,
                              order=orders, sum_groups=True)
