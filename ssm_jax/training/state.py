"""The train state: one pytree holding everything a resumed run needs (step, params, optimizer, model state, rng)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax.training import train_state

from ssm_jax.training.mesh import replicate


class TrainState(train_state.TrainState):
    """flax TrainState plus mutable model collections (e.g. batch norm statistics) and the run's PRNG key.

    The key is a raw uint32 key so that checkpoints stay plain arrays; a step's randomness is
    ``fold_in(rng, step)``, so a resumed run draws the same numbers as an uninterrupted one.
    """

    model_state: Any = None
    rng: jax.Array = None

    def step_rng(self) -> jax.Array:
        return jax.random.fold_in(self.rng, self.step)


def create_state(model, tx, rng, image_size: int, mesh, prepare: Callable[[dict], dict] = lambda v: v) -> TrainState:
    """Initialise on one zero image, let ``prepare`` adjust the variables (e.g. put pretrained weights in), split
    parameters from the other collections, and replicate the state over the mesh."""
    init_rng, run_rng = jax.random.split(rng)
    variables = jax.jit(model.init, static_argnames="train")(init_rng, jnp.zeros((1, image_size, image_size, 3)),
                                                             train=False)
    variables = dict(prepare(variables))
    params = variables.pop("params")
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx, model_state=variables, rng=run_rng)
    return replicate(state, mesh)
