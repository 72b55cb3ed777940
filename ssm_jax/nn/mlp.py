"""Two-layer perceptron on the last axis."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Mlp(nn.Module):
    """Dense(hidden) -> GELU -> Dense(features), applied to the last axis of any-rank input."""

    hidden: int
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x)
        return nn.Dense(self.features, dtype=self.dtype, name="fc2")(nn.gelu(x))
