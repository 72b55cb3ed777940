"""SplitDense: a bias-free Dense whose outputs go separate ways, computed one matmul per output."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


class SplitDense(nn.Module):
    """(..., in) -> one (..., size) array per entry of ``sizes``: ``x @ kernel`` cut into column blocks, with the
    parameter of ``nn.Dense(sum(sizes), use_bias=False)`` (``kernel`` (in, sum(sizes)), the same initial values
    under the same name), so converted weights and checkpoints are unchanged. Each block is its own matmul: nothing
    is sliced out of one output in the forward, nor are the blocks' gradients concatenated into one in the backward
    (SS2D's x and z on MemoryMamba-tiny's train step: 0.7 ms of slices and 2.2 ms of concatenation a step, 224 px,
    batch 64, float32, lent H100, ``benchmarks/step_profile.py``)."""

    sizes: tuple[int, ...]
    kernel_init: Callable = nn.linear.default_kernel_init
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], sum(self.sizes)), jnp.float32)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        return tuple(x @ block for block in jnp.split(kernel, np.cumsum(self.sizes)[:-1], axis=1))
