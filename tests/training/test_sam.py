"""Sharpness-aware minimisation (``config.optim.sam_rho``): the train step's gradient against a float64 NumPy SAM
step on a linear classifier, on one device and four; off at 0; bad values and other tasks refused by name."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from ssm_jax.training import classification, run
from ssm_jax.training import state as state_lib
from ssm_jax.training.mesh import make_mesh, shard_batch
from tests.training.test_grad_accum import gradient_recorder

NUM_CLASSES, SIZE = 3, 4


class PooledLinear(nn.Module):
    """Mean over the image, then a dense layer: a classifier whose SAM step is easy to write out in NumPy."""

    @nn.compact
    def __call__(self, images, train: bool = False):
        return {"logits": nn.Dense(NUM_CLASSES)(images.mean((1, 2)))}


def _softmax_ce_grads(x, labels, kernel, bias):
    """d mean cross-entropy / d (kernel, bias) of logits x @ kernel + bias, float64."""
    logits = x @ kernel + bias
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    d = (p - np.eye(NUM_CLASSES)[labels]) / len(labels)
    return x.T @ d, d.sum(0)


def _sam_reference(params, images, labels, rho):
    x = images.astype(np.float64).mean((1, 2))
    kernel, bias = (np.asarray(params["Dense_0"][k], np.float64) for k in ("kernel", "bias"))
    g = _softmax_ce_grads(x, labels, kernel, bias)
    if rho == 0:
        return g
    scale = rho / np.sqrt(sum((v ** 2).sum() for v in g))
    return _softmax_ce_grads(x, labels, kernel + scale * g[0], bias + scale * g[1])


@pytest.mark.parametrize("devices", [1, 4])
@pytest.mark.parametrize("rho", [0.0, 0.5])
def test_sam_gradient_matches_numpy(tiny_config, devices, rho):
    loss = tiny_config().loss.copy_and_resolve_references()
    loss.lambda_c = loss.lambda_f = loss.label_smoothing = 0.0
    rng = np.random.default_rng(0)
    batch = {"image": rng.standard_normal((8, SIZE, SIZE, 3)).astype(np.float32),
             "label": rng.integers(0, NUM_CLASSES, 8).astype(np.int32)}
    mesh = make_mesh(jax.devices()[:devices])
    state = state_lib.create_state(PooledLinear(), gradient_recorder(), jax.random.PRNGKey(0), SIZE, mesh)
    params = jax.device_get(state.params)
    step = classification.make_train_step(loss, mesh, sam_rho=rho)
    state, _ = step(state, shard_batch(batch, mesh))
    got = jax.device_get(state.opt_state)["Dense_0"]  # the recorder keeps the gradient it was given
    kernel, bias = _sam_reference(params, batch["image"], batch["label"], rho)
    np.testing.assert_allclose(got["kernel"], kernel, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["bias"], bias, rtol=1e-5, atol=1e-7)
    if rho:  # the perturbed point's gradient differs from the plain one by more than the tolerance
        plain = _sam_reference(params, batch["image"], batch["label"], 0.0)[0]
        assert np.abs(kernel - plain).max() > 1e-3


def test_bad_sam_rho_and_other_tasks_are_named(tiny_config, tmp_path):
    loss = tiny_config().loss
    with pytest.raises(ValueError, match=r"config.optim.sam_rho=-0.1; expected a value >= 0"):
        classification.make_train_step(loss, make_mesh(), sam_rho=-0.1)
    from tests.training.test_reconstruction import make_tiny_config
    config = make_tiny_config()
    with config.unlocked():
        config.optim.sam_rho = 0.05
    with pytest.raises(ValueError, match=r"config.optim.sam_rho is a setting of classification runs"):
        run.Experiment(config, tmp_path)


def test_the_config_reaches_the_train_step(tiny_config):
    config = tiny_config()
    with config.unlocked():
        config.optim.sam_rho = 0.05
    kwargs = classification.step_kwargs(config, run.load_source(config, "train"))
    assert kwargs["sam_rho"] == 0.05
