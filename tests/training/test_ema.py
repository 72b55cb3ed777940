"""Parameter moving average (``config.optim.ema_decay``): the debiased average against a float64 NumPy reference,
frozen parameters unchanged, bad decays named, evaluation using the average, and restoring for evaluation reading
the average but not the optimizer's moments."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax.training import train_state

from configs.common import optim_config
from ssm_jax.data.pipeline import normalize
from ssm_jax.inference import Predictor
from ssm_jax.training import classification, run
from ssm_jax.training.checkpoint import Checkpointer, CheckpointError, model_fingerprint
from ssm_jax.training.ema import eval_params, evaluation_state, evaluation_template, param_ema
from ssm_jax.training.mesh import shard_batch
from ssm_jax.training.optim import make_optimizer


def _state(tx, params):
    return train_state.TrainState.create(apply_fn=None, params=params, tx=tx)


def test_debiased_average_matches_float64_reference():
    decay, lr = 0.8, 0.1
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3,)).astype(np.float32), "b": np.float32(0.5)}
    state = _state(optax.chain(optax.sgd(lr), param_ema(decay)), jax.tree.map(jnp.asarray, params))
    for key in params:  # nothing averaged before the first step: the parameters themselves
        np.testing.assert_array_equal(eval_params(state)[key], params[key])
    history = []
    for _ in range(6):
        grads = {"w": rng.normal(size=(3,)).astype(np.float32), "b": np.float32(rng.normal())}
        state = state.apply_gradients(grads=jax.tree.map(jnp.asarray, grads))
        history.append(jax.tree.map(lambda x: np.asarray(x, np.float64), state.params))
    t = len(history)
    weights = np.array([(1 - decay) * decay ** (t - 1 - s) for s in range(t)])
    for key in params:
        expected = sum(w * h[key] for w, h in zip(weights, history)) / weights.sum()
        np.testing.assert_allclose(eval_params(state)[key], expected, rtol=1e-6, atol=1e-7, err_msg=key)
        assert not np.allclose(expected, history[-1][key])  # the average is not just the last parameters


def test_frozen_parameters_average_to_themselves_and_off_means_last_params():
    params = {"encoder": {"w": jnp.ones((2,))}, "head": {"w": jnp.zeros((2,))}}
    config = optim_config(lr=0.1, ema_decay=0.9, warmup_fraction=0.0)
    state = _state(make_optimizer(config, 10, frozen=("encoder",)), params)
    for _ in range(3):
        state = state.apply_gradients(grads={"encoder": {"w": jnp.ones((2,))}, "head": {"w": jnp.ones((2,))}})
    averaged = eval_params(state)
    np.testing.assert_allclose(averaged["encoder"]["w"], 1.0, rtol=1e-6)
    assert np.all(np.asarray(averaged["head"]["w"]) > np.asarray(state.params["head"]["w"]))  # lags the descent
    plain = _state(make_optimizer(optim_config(lr=0.1), 10), params).apply_gradients(grads=params)
    assert eval_params(plain) is plain.params


def test_restoring_for_evaluation_reads_the_average_and_not_the_moments(tmp_path):
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    state = _state(optax.chain(optax.adam(0.1), param_ema(0.9)), params)
    for _ in range(2):
        state = state.apply_gradients(grads=jax.tree.map(jnp.ones_like, params))
    checkpointer = Checkpointer(tmp_path, model_fingerprint("m", params))
    checkpointer.save(2, state, {})
    restored, _ = checkpointer.restore(evaluation_template(jax.tree.map(jnp.zeros_like, state)))
    checkpointer.close()
    adam, average = restored.opt_state
    assert jax.tree.leaves(adam[0]) == [ocp.PLACEHOLDER] * 5  # count, mu and nu of w and b: left unread
    for restored_leaf, saved_leaf in zip(jax.tree.leaves((restored.params, average)),
                                         jax.tree.leaves((state.params, state.opt_state[1]))):
        np.testing.assert_array_equal(restored_leaf, saved_leaf)
    evaluated = evaluation_state(restored)
    assert evaluated.opt_state == () and eval_params(evaluated) is evaluated.params
    for key in params:
        np.testing.assert_array_equal(evaluated.params[key], eval_params(state)[key])
        assert not np.allclose(evaluated.params[key], state.params[key])  # the average, not the last parameters


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_bad_decay_is_named(decay):
    with pytest.raises(ValueError, match=rf"config.optim.ema_decay={decay}; expected a value in \[0, 1\)"):
        make_optimizer(optim_config(ema_decay=decay), 10)


@pytest.mark.slow  # a training run, then its predictions compiled: in the slow run, keeping CI's run short
def test_evaluation_uses_the_average(folder_root, tmp_path):
    from tests.training.conftest import make_tiny_config
    config = make_tiny_config(folder_root, max_steps=4)
    config.unlock()
    config.optim.ema_decay = 0.9
    experiment = run.Experiment(config, tmp_path)
    experiment.train()
    state, mesh = experiment.state, experiment.mesh
    images = shard_batch({"x": np.random.default_rng(1).normal(size=(8, 16, 16, 3)).astype(np.float32)}, mesh)["x"]
    probs = np.asarray(classification.make_predict_step(mesh)(state, images)["probs"])

    def with_params(params):
        logits = state.apply_fn({"params": params, **state.model_state}, images, train=False)["logits"]
        return np.asarray(jax.nn.softmax(logits, -1))

    np.testing.assert_allclose(probs, with_params(eval_params(state)), rtol=1e-5, atol=1e-6)
    assert np.abs(probs - with_params(state.params)).max() > 1e-6
    frames = np.random.default_rng(2).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    predictor = Predictor(experiment)  # keeps the average, not the optimizer's state that holds it
    assert predictor._state.opt_state == ()
    frame_probs = classification.make_predict_step(mesh)(state, shard_batch({"x": normalize(frames)}, mesh)["x"])
    np.testing.assert_allclose(predictor(frames)["probs"], np.asarray(frame_probs["probs"]), rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # two training runs; the default run checks the average itself (float64, restore, freeze)
def test_turning_the_average_on_over_a_run_without_it_is_named(folder_root, tmp_path):
    from tests.training.conftest import make_tiny_config
    run.Experiment(make_tiny_config(folder_root, max_steps=3), tmp_path).train()
    config = make_tiny_config(folder_root, max_steps=6)
    config.unlock()
    config.optim.ema_decay = 0.9
    with pytest.raises(CheckpointError, match=r"another structure .*optim.ema_decay.*config.json"):
        run.Experiment(config, tmp_path).train()
