"""Stochastic depth."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class DropPath(nn.Module):
    """Zero a whole sample's branch with probability ``rate`` in training, scale the kept ones by 1/(1-rate).

    Needs the ``dropout`` RNG when ``rate > 0`` and not ``deterministic``.
    """

    rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.rate, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
