"""The Pallas scan under data parallelism: with a context mesh each device scans its own batch rows
(``kernels/selective_scan/per_device.py``), with the same values and gradients as one device scanning all."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ssm_jax.ssm import selective_scan
from ssm_jax.training.mesh import make_mesh, traced_on
from tests.kernels.test_selective_scan_pallas import ALL_OPTIONS, make_inputs, rel_err

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
BATCHED = {"u", "delta", "B", "C", "z"}


def loss(impl):
    def value(*arrays):
        y, last = selective_scan(**dict(zip(NAMES, arrays)), delta_softplus=True, return_last_state=True, impl=impl)
        return jnp.sum(y * jnp.cos(y)) + jnp.sum(last ** 2)
    return jax.value_and_grad(value, argnums=tuple(range(len(NAMES))))


def sharded_inputs(mesh, x):
    spec = lambda name: PartitionSpec("data") if name in BATCHED else PartitionSpec()
    return [jax.device_put(x[n], NamedSharding(mesh, spec(n))) for n in NAMES]


def test_each_device_scans_its_own_rows():
    """Under ``traced_on`` the kernel call sits inside a shard_map and sees a quarter of the batch."""
    mesh = make_mesh()
    assert mesh.devices.size == 4, "conftest gives 4 CPU devices"
    x = make_inputs(0, 8, 12, 8, 2, 4, **ALL_OPTIONS)
    on_mesh = str(jax.make_jaxpr(traced_on(mesh, loss("pallas")))(*sharded_inputs(mesh, x)))
    alone = str(jax.make_jaxpr(loss("pallas"))(*[x[n] for n in NAMES]))
    assert "shard_map" in on_mesh and "shard_map" not in alone
    assert "pallas_call" in on_mesh
    assert "f32[2,12,8]" in on_mesh.split("shard_map", 1)[1], "the kernel should see 8 / 4 = 2 rows per device"


def test_sharded_values_and_gradients_match_one_device():
    """Values and all eight gradients (the replicated A, D, delta_bias summed over devices) against the
    sequential scan on the whole batch; float32, relative tolerance 2e-5."""
    mesh = make_mesh()
    x = make_inputs(1, 8, 12, 8, 2, 4, **ALL_OPTIONS)
    value, grads = jax.jit(traced_on(mesh, loss("pallas")))(*sharded_inputs(mesh, x))
    value_ref, grads_ref = jax.jit(loss("sequential"))(*[x[n] for n in NAMES])
    assert abs(float(value) - float(value_ref)) <= 2e-5 * abs(float(value_ref))
    for name, g, g_ref in zip(NAMES, grads, grads_ref):
        assert rel_err(g, g_ref) < 2e-5, name


def test_rows_that_do_not_split_run_unsharded():
    """A batch of 6 over 4 devices cannot be split: the call runs as it is, with the right values."""
    mesh = make_mesh()
    x = make_inputs(2, 6, 5, 4, 1, 2, **ALL_OPTIONS)
    jaxpr = str(jax.make_jaxpr(traced_on(mesh, loss("pallas")))(*[x[n] for n in NAMES]))
    assert "shard_map" not in jaxpr
    value, _ = jax.jit(traced_on(mesh, loss("pallas")))(*[x[n] for n in NAMES])
    value_ref, _ = loss("sequential")(*[x[n] for n in NAMES])
    np.testing.assert_allclose(float(value), float(value_ref), rtol=2e-5)


def test_ss2d_call_sharded_matches_one_device():
    """SS2D's in-place call (u one group wide, the groups' outputs summed, scan orders, no gate) under the mesh: each
    device's kernels read its rows of the shared u and of y's one-group-wide gradient; values and gradients against
    the sequential scan on the whole batch, relative tolerance 2e-5."""
    mesh = make_mesh()
    x = make_inputs(3, 8, 12, 8, 2, 4, D=True, delta_bias=True)
    x["u"] = x["u"][:, :, :4]
    order = jnp.stack([jnp.arange(12), jnp.arange(12)[::-1]])
    names = ("u", "delta", "B", "C", "D", "delta_bias")

    def loss(impl):
        def value(*arrays):
            a = dict(zip(names, arrays))
            y = selective_scan(a["u"], a["delta"], x["A"], a["B"], a["C"], a["D"], None, a["delta_bias"],
                               delta_softplus=True, impl=impl, order=order, sum_groups=True)
            return jnp.sum(y * jnp.cos(y))
        return jax.value_and_grad(value, argnums=tuple(range(len(names))))

    spec = lambda name: PartitionSpec("data") if name in BATCHED else PartitionSpec()
    sharded = [jax.device_put(x[n], NamedSharding(mesh, spec(n))) for n in names]
    on_mesh = str(jax.make_jaxpr(traced_on(mesh, loss("pallas")))(*sharded))
    assert "shard_map" in on_mesh and "f32[2,12,4]" in on_mesh.split("shard_map", 1)[1]
    value, grads = jax.jit(traced_on(mesh, loss("pallas")))(*sharded)
    value_ref, grads_ref = jax.jit(loss("sequential"))(*[x[n] for n in names])
    assert abs(float(value) - float(value_ref)) <= 2e-5 * abs(float(value_ref))
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert g.shape == g_ref.shape and rel_err(g, g_ref) < 2e-5, name
