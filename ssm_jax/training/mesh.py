"""Data parallelism: a 1-D device mesh with axis ``data``; batches sharded along it, parameters replicated.

The same code runs on one CPU, N virtual CPU devices (``--xla_force_host_platform_device_count=N``), N GPUs, and
multi-process jobs, where each process feeds its local slice of the global batch.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed() -> None:
    """Call ``jax.distributed.initialize()`` when started as one process of a multi-process job.

    SLURM and Open MPI jobs are detected by JAX itself; any other launcher sets ``JAX_COORDINATOR_ADDRESS``
    (host:port of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs = {name: int(os.environ[env]) for name, env in (("num_processes", "JAX_NUM_PROCESSES"),
                                                                ("process_id", "JAX_PROCESS_ID")) if env in os.environ}
        jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"], **kwargs)
    elif any(int(os.environ.get(k, "1")) > 1 for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")):
        jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
    """A mesh over ``devices`` (default: all devices of all processes) with the single axis ``data``."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def traced_on(mesh: Mesh, fn):
    """``fn`` traced with ``mesh`` as the context (abstract) mesh, for ``jax.jit``.

    Kernels that XLA's partitioner cannot split, the Pallas selective scan, read it to run on each device's own
    batch rows instead of the gathered batch (``kernels/selective_scan/per_device.py``).
    """

    @functools.wraps(fn)
    def on_mesh(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return on_mesh


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def jit_train_step(mesh: Mesh, step):
    """``step(state, batch) -> (state, metrics)`` compiled for data parallelism: the state replicated, the batch split
    along ``data``, the old state's buffers donated to the new one."""
    replicated = replicated_sharding(mesh)
    return jax.jit(traced_on(mesh, step), in_shardings=(replicated, batch_sharding(mesh)),
                   out_shardings=(replicated, replicated), donate_argnums=0)


def jit_predict(mesh: Mesh, predict):
    """``predict(state, batch) -> outputs`` compiled for data parallelism: the state replicated, the batch and the
    outputs split along ``data``."""
    return jax.jit(traced_on(mesh, predict), in_shardings=(replicated_sharding(mesh), batch_sharding(mesh)),
                   out_shardings=batch_sharding(mesh))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    """The global batch must split evenly over the devices and over the processes."""
    devices, processes = mesh.devices.size, jax.process_count()
    if batch_size % devices or batch_size % processes:
        raise ValueError(f"{what}={batch_size} must be a multiple of the number of devices ({devices}) "
                         f"and of processes ({processes})")


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Put this process's slice of a batch (dict of NumPy arrays) on the mesh, sharded along ``data``."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def replicate(tree, mesh: Mesh):
    """Place a pytree on every device of the mesh."""
    return jax.device_put(tree, replicated_sharding(mesh))
