"""The train state's initialisation: compiled with its own XLA options on CPU, yet the same variables as a plain
``jax.jit(model.init)``, split into parameters and model state and replicated over the mesh."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssm_jax.training import state as state_lib
from ssm_jax.training.mesh import make_mesh


class ConvBatchNormHead(nn.Module):
    """Parameters of several shapes and initialisers (normal, truncated normal, uniform) and batch statistics."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), kernel_init=nn.initializers.truncated_normal(0.02))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dense(5, kernel_init=nn.initializers.uniform(0.1), bias_init=nn.initializers.normal(1.0))(x.mean((1, 2)))
        return nn.Dense(3)(x)


def test_initial_variables_match_a_plain_jit_of_init():
    model, rng = ConvBatchNormHead(), jax.random.PRNGKey(7)
    assert jax.default_backend() == "cpu" and state_lib.INIT_COMPILER_OPTIONS["cpu"]  # the options are in play
    got = state_lib.init_variables(model, rng, 8)
    want = jax.jit(model.init, static_argnames="train")(rng, jnp.zeros((1, 8, 8, 3)), train=False)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)  # a last-bit difference at most
    assert float(jnp.std(got["params"]["Dense_0"]["bias"])) > 0.1  # drawn, not zeros


def test_state_holds_params_model_state_and_its_own_key():
    model = ConvBatchNormHead()
    state = state_lib.create_state(model, optax.sgd(0.1), jax.random.PRNGKey(7), 8, make_mesh(jax.devices()[:1]))
    init_rng, run_rng = jax.random.split(jax.random.PRNGKey(7))
    variables = state_lib.init_variables(model, init_rng, 8)
    assert int(state.step) == 0 and set(state.model_state) == {"batch_stats"}
    for g, w in zip(jax.tree.leaves(state.params), jax.tree.leaves(variables["params"])):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(state.rng, run_rng)


def test_abstract_state_is_the_states_shapes_and_placement_without_running_the_initialisation(monkeypatch):
    """What a checkpoint restore is given: the same tree, shapes, dtypes and shardings as the built state (Adam's
    moments, batch statistics, the step and key too), while nothing is compiled or run to make it."""
    model, mesh, tx = ConvBatchNormHead(), make_mesh(), optax.adamw(1e-3)

    def create():
        return state_lib.create_state(model, tx, jax.random.PRNGKey(7), 8, mesh)

    built = create()
    monkeypatch.setattr(jax.stages.Lowered, "compile", lambda *args, **kwargs: pytest.fail("compiled"))
    abstract = state_lib.abstract_state(create, mesh)
    assert jax.tree.structure(abstract) == jax.tree.structure(built) and mesh.devices.size == 4
    for a, b in zip(jax.tree.leaves(abstract), jax.tree.leaves(built)):
        assert isinstance(a, jax.ShapeDtypeStruct)
        assert (a.shape, a.dtype, a.sharding) == (b.shape, b.dtype, b.sharding)


def test_init_lowers_the_random_bits_with_the_threefry_kernel_flag_and_restores_it():
    """The flag is on while ``init`` is traced and lowered (the lowering is where it acts), off with
    ``threefry_kernel=False``, and JAX's default again afterwards; the values are the same either way (off GPU the
    flag changes nothing, and on GPU it is the same function: ``benchmarks/init_time.py``)."""
    seen = []

    class Recorder(ConvBatchNormHead):
        def __call__(self, x, train: bool = False):
            seen.append(jax.config.jax_threefry_gpu_kernel_lowering)
            return super().__call__(x, train)

    rng, default = jax.random.PRNGKey(3), jax.config.jax_threefry_gpu_kernel_lowering
    on = state_lib.init_variables(Recorder(), rng, 8)
    assert jax.config.jax_threefry_gpu_kernel_lowering == default is False  # restored after the init
    off = state_lib.init_variables(Recorder(), rng, 8, threefry_kernel=False)
    assert seen == [True, False] and jax.config.jax_threefry_gpu_kernel_lowering is False
    for a, b in zip(jax.tree.leaves(on), jax.tree.leaves(off)):
        np.testing.assert_array_equal(a, b)
