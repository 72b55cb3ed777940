"""Gradient accumulation: one optimizer update from a global batch taken as several micro-batches in turn.

Inside a jitted train step the batch is split into ``steps`` micro-batches and ``jax.lax.scan`` computes the loss
and gradients of one micro-batch at a time, so peak activation memory is that of one micro-batch; the results are
summed in float32 and divided by ``steps``. For a loss that is a mean of per-image terms this equals the big-batch
gradient. Micro-batch ``i`` is rows ``i, i + steps, i + 2 * steps, ...``: each device's contiguous slice of the
batch then holds an equal share of every micro-batch, so splitting moves no data between devices. XLA
all-reduces each micro-batch's gradient inside the loop, so gradient traffic grows with ``steps``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ssm_jax.training.mesh import DATA_AXIS


def check_grad_accum_steps(steps: int) -> None:
    """The number of micro-batches must be a positive integer."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"train.grad_accum_steps={steps!r} must be an integer >= 1")


def check_grad_accum(batch_size: int, steps: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    """``steps`` must be a positive integer and every micro-batch (``batch_size / steps``) must split evenly over
    the mesh's devices."""
    check_grad_accum_steps(steps)
    devices = mesh.devices.size
    if batch_size % (steps * devices):
        raise ValueError(f"{what}={batch_size} must be a multiple of train.grad_accum_steps ({steps}) x the number "
                         f"of devices ({devices}) = {steps * devices}, so that each of the {steps} micro-batches "
                         f"splits evenly over the devices")


def split_micro_batches(batch, steps: int, mesh: Mesh):
    """Every array (B, ...) of ``batch`` -> (steps, B / steps, ...), micro-batch ``i`` = rows ``i::steps``, each
    micro-batch sharded along ``data``."""
    sharding = NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))

    def split(x):
        micro = x.reshape(x.shape[0] // steps, steps, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(micro, sharding)

    return jax.tree.map(split, batch)


def mean_over_micro_batches(fn: Callable, batch, rng, steps: int, mesh: Mesh):
    """The mean over ``steps`` micro-batches of ``fn(micro_batch, rng_i) -> pytree of floating arrays``.

    ``rng_i = fold_in(rng, i)``, so each micro-batch draws its own dropout masks. With ``steps == 1`` this is
    ``fn(batch, rng)`` itself, so a run without accumulation computes exactly what it did before it existed.
    Call inside a jitted function.
    """
    if steps == 1:
        return fn(batch, rng)
    check_grad_accum(jax.tree.leaves(batch)[0].shape[0], steps, mesh, what="batch size")
    micro = split_micro_batches(batch, steps, mesh)
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), micro)
    shapes = jax.eval_shape(fn, one, rng)
    not_float = [s.dtype for s in jax.tree.leaves(shapes) if not jnp.issubdtype(s.dtype, jnp.floating)]
    if not_float:
        raise TypeError(f"mean_over_micro_batches: fn must return floating arrays only, got dtypes {not_float}")

    def accumulate(total, inputs):
        index, micro_batch = inputs
        out = fn(micro_batch, jax.random.fold_in(rng, index))
        return jax.tree.map(lambda t, o: t + o.astype(jnp.float32), total, out), None

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)
    total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(steps), micro))
    return jax.tree.map(lambda t, s: (t / steps).astype(s.dtype), total, shapes)
