"""The train state: one pytree holding everything a resumed run needs (step, params, optimizer, model state, rng)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax.training import train_state

from ssm_jax.training.mesh import replicate, replicated_sharding


class TrainState(train_state.TrainState):
    """flax TrainState plus mutable model collections (e.g. batch norm statistics) and the run's PRNG key.

    The key is a raw uint32 key so that checkpoints stay plain arrays; a step's randomness is
    ``fold_in(rng, step)``, so a resumed run draws the same numbers as an uninterrupted one.
    """

    model_state: Any = None
    rng: jax.Array = None

    def step_rng(self) -> jax.Array:
        return jax.random.fold_in(self.rng, self.step)

    def apply_gradients_and_updates(self, grads, updates: dict) -> "TrainState":
        """One optimiser step on ``grads``, with the collections of ``updates`` merged into ``model_state`` one level
        deep: a collection's subtrees that ``updates`` leaves out (a frozen encoder's statistics) stay as they are."""
        model_state = {**self.model_state,
                       **{name: {**self.model_state[name], **tree} for name, tree in updates.items()}}
        return self.apply_gradients(grads=grads, model_state=model_state)


# XLA options for compiling a model's initialisation, by backend. The init runs once, so its compile is what counts,
# and on CPU most of that is the threefry random bits of each distinct parameter shape. The lowest backend
# optimisation halved it on this project's 2-core machine (2026-12-02): memorymamba_elpv:cpu 14.6 -> 7.0 s, the tests'
# tiny MambaAD 24.4 -> 12.6 s, for initial values within 1.2e-7 of the optimised build's.
INIT_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def init_variables(model, rng, image_size: int, threefry_kernel: bool = True) -> dict:
    """``model.init`` on one zero image (inference mode), compiled with ``INIT_COMPILER_OPTIONS``; traced as it is
    under ``abstract_state``.

    ``threefry_kernel`` lowers the random bits with ``jax_threefry_gpu_kernel_lowering`` (one CUDA kernel a draw
    instead of unrolled rounds; the same function, and no effect off GPU): on a lent H100 MemoryMamba-tiny's init took
    19.2 s instead of 105.1 s with the same parameters to the bit (``benchmarks/init_time.py``, 2026-12-06). The flag is
    restored afterwards, so the rest of the program keeps JAX's default."""
    image = jnp.zeros((1, image_size, image_size, 3))
    if isinstance(rng, jax.core.Tracer):
        return model.init(rng, image, train=False)
    previous = jax.config.jax_threefry_gpu_kernel_lowering
    jax.config.update("jax_threefry_gpu_kernel_lowering", threefry_kernel)
    try:
        lowered = jax.jit(model.init, static_argnames="train").lower(rng, image, train=False)
    finally:
        jax.config.update("jax_threefry_gpu_kernel_lowering", previous)
    return lowered.compile(compiler_options=INIT_COMPILER_OPTIONS.get(jax.default_backend(), {}))(rng, image)


def create_state(model, tx, rng, image_size: int, mesh, prepare: Callable[[dict], dict] = lambda v: v) -> TrainState:
    """Initialise on one zero image (``init_variables``), let ``prepare`` adjust the variables (e.g. put pretrained
    weights in), split parameters from the other collections, and replicate the state over the mesh."""
    init_rng, run_rng = jax.random.split(rng)
    variables = dict(prepare(init_variables(model, init_rng, image_size)))
    params = variables.pop("params")
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx, model_state=variables, rng=run_rng)
    return replicate(state, mesh)


def abstract_state(create: Callable[[], TrainState], mesh) -> TrainState:
    """The state ``create`` builds, as the shapes, dtypes and placement alone, with no initialisation compiled or run:
    all a checkpoint restore needs (a resumed run, eval.py, a Predictor). The initialisation of a large network is
    the slow part of starting from a checkpoint, and its arrays would sit beside the restored ones."""
    sharding = replicated_sharding(mesh)
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                        jax.eval_shape(create))
