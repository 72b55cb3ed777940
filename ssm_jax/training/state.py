"""The train state: one pytree holding everything a resumed run needs (step, params, optimizer, model state, rng)."""

from __future__ import annotations

from typing import Any

import jax
from flax.training import train_state


class TrainState(train_state.TrainState):
    """flax TrainState plus mutable model collections (e.g. batch norm statistics) and the run's PRNG key.

    The key is a raw uint32 key so that checkpoints stay plain arrays; a step's randomness is
    ``fold_in(rng, step)``, so a resumed run draws the same numbers as an uninterrupted one.
    """

    model_state: Any = None
    rng: jax.Array = None

    def step_rng(self) -> jax.Array:
        return jax.random.fold_in(self.rng, self.step)
