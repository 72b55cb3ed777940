"""Gradient accumulation (``config.train.grad_accum_steps``) in both task families' train steps, on 1 and 4 devices.

The steps use an "optimizer" that keeps the gradient it was given as its state and leaves the parameters alone, so
gradients are compared directly at float32 precision (Adam's first step is about lr * sign(gradient) and would hide
errors; parameter differences would lose digits to the parameters' size). References are the un-accumulated step
(``grad_accum_steps=1``), run on the big batch where the loss is a mean of per-image terms, and on each micro-batch
``batch[i::k]`` where the loss depends on the batch.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn

from ssm_jax.training import classification, reconstruction, run
from ssm_jax.training import state as state_lib
from ssm_jax.training.accumulate import check_grad_accum
from ssm_jax.training.mesh import make_mesh, shard_batch
from tests.training.conftest import make_tiny_config
from tests.training.test_reconstruction import make_tiny_config as make_tiny_ad_config

# float32 gradients summed in another order (micro-batch partial sums, then their mean): relative 1e-5 of each
# leaf's largest entry, the project's float32 tolerance.
RTOL = 1e-5
DEVICES = {"1 device": 1, "4 devices": 4}


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(tree))


def _batch(size: int, image_size: int, num_classes: int = 3) -> dict:
    rng = np.random.default_rng(0)
    return {"image": rng.standard_normal((size, image_size, image_size, 3), dtype=np.float32),
            "label": (np.arange(size) % num_classes).astype(np.int32)}


def gradient_recorder() -> optax.GradientTransformation:
    """Zero updates; the state is the last gradient received."""
    return optax.GradientTransformation(lambda params: jax.tree.map(jnp.zeros_like, params),
                                        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def _one_step(family, model, loss_config, image_size, batch, devices: int, accum: int, prepare=lambda v: v,
              **step_kwargs):
    """(gradient, model state after, metrics, compiled temporary bytes) of one train step on the first ``devices``
    devices, from the initial variables as ``prepare`` leaves them."""
    mesh = make_mesh(jax.devices()[:devices])
    state = state_lib.create_state(model, gradient_recorder(), jax.random.PRNGKey(0), image_size, mesh, prepare)
    batch = shard_batch(batch, mesh)
    step = family.make_train_step(loss_config, mesh, accum, **step_kwargs).lower(state, batch).compile()
    state, metrics = step(state, batch)
    temp = step.memory_analysis().temp_size_in_bytes
    return _host(state.opt_state), _host(state.model_state), _host(metrics), temp


def _assert_trees_close(actual, expected, what: str):
    """Per leaf: RTOL relative to the leaf's largest entry, plus 1e-6 of the tree's largest entry for leaves whose
    exact value is 0 (a bias right before a BatchNorm has zero gradient: the normalisation removes any shift), so
    that what is left of them is float32 rounding of sums of much larger terms."""
    tree_max = max(np.abs(b).max() for b in jax.tree.leaves(expected))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * np.abs(b).max() + 1e-6 * tree_max,
                                   err_msg=f"{what} {jax.tree_util.keystr(path)}")


def _micro_mean(family, model, loss_config, image_size, batch, devices: int, accum: int, prepare=lambda v: v):
    """The reference for a batch-dependent loss: the mean over micro-batches ``batch[i::accum]`` of the
    un-accumulated steps' gradients, model states and metrics."""
    micro = [_one_step(family, model, loss_config, image_size, {k: v[i::accum] for k, v in batch.items()},
                       devices, 1, prepare)[:3] for i in range(accum)]
    return tuple(jax.tree.map(lambda *x: np.mean(x, axis=0), *parts) for parts in zip(*micro))


@pytest.fixture(scope="module")
def classifier(folder_root):
    """(model, loss config without memory terms, loss config with them, image size) of a one-block MemoryMamba."""
    config = make_tiny_config(folder_root)
    plain = config.loss.copy_and_resolve_references()
    plain.lambda_c = plain.lambda_f = 0.0
    assert config.loss.lambda_c > 0 and config.loss.lambda_f > 0
    return run.build_model(config), plain, config.loss, config.data.image_size


@pytest.mark.parametrize("devices, accum", [pytest.param(1, 2, marks=pytest.mark.slow), (4, 4)],
                         ids=["1 device, 2 micro-batches", "4 devices, 4 micro-batches of 1 per device"])
def test_classification_accumulation_equals_big_batch_step(classifier, devices, accum):
    model, plain_loss, _, image_size = classifier
    batch = _batch(16, image_size)
    expected, _, expected_metrics, big_temp = _one_step(classification, model, plain_loss, image_size, batch,
                                                        devices, 1)
    grads, _, metrics, temp = _one_step(classification, model, plain_loss, image_size, batch, devices, accum)
    _assert_trees_close(grads, expected, "gradient")
    assert set(metrics) == set(expected_metrics)
    np.testing.assert_allclose(metrics["loss"], expected_metrics["loss"], rtol=RTOL)
    assert metrics["acc"] == expected_metrics["acc"]  # equal micro-batches: mean of accuracies = accuracy
    # Activations are those of one micro-batch: XLA's temporary buffers shrink to about 1/k (measured on CPU: 0.52
    # for k = 2, 0.28 for k = 4); the allowance covers buffers that do not grow with the batch.
    assert temp < (1 / accum + 0.25) * big_temp, (temp, big_temp)


@pytest.mark.slow  # a third accumulated step compiled; the 4-device step above is the default run's check
def test_weighted_smoothed_cross_entropy_accumulates_exactly(classifier):
    """Class weights and label smoothing keep the cross-entropy a mean of per-image terms, so accumulating
    micro-batches still gives the big-batch step."""
    model, plain_loss, _, image_size = classifier
    loss = plain_loss.copy_and_resolve_references()
    loss.label_smoothing = 0.1
    weights = np.array([0.5, 2.0, 1.5], np.float32)
    batch = _batch(16, image_size)
    expected, _, expected_metrics, _ = _one_step(classification, model, loss, image_size, batch, 1, 1,
                                                 class_weights=weights)
    grads, _, metrics, _ = _one_step(classification, model, loss, image_size, batch, 1, 2, class_weights=weights)
    _assert_trees_close(grads, expected, "gradient")
    np.testing.assert_allclose(metrics["loss"], expected_metrics["loss"], rtol=RTOL)


def test_memory_losses_are_computed_per_micro_batch(classifier):
    """With the memory losses on, the step is the mean of the micro-batches' steps (each computes eq. 23's class
    means and eq. 24's negatives over its own 8 images), which differs from the big-batch step, so this also
    shows that the batch really is split."""
    model, _, memory_loss, image_size = classifier
    batch = _batch(16, image_size)
    grads, _, metrics, _ = _one_step(classification, model, memory_loss, image_size, batch, 4, 2)
    expected, _, expected_metrics = _micro_mean(classification, model, memory_loss, image_size, batch, 4, 2)
    _assert_trees_close(grads, expected, "gradient")
    for key in ("loss", "loss_cls", "loss_contrastive", "loss_nce"):
        np.testing.assert_allclose(metrics[key], expected_metrics[key], rtol=RTOL, err_msg=key)


class _Encoder(nn.Module):
    """Conv + BatchNorm in inference mode, like MambaAD's frozen ResNet."""

    @nn.compact
    def __call__(self, x):
        return nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(x))


class _Decoder(nn.Module):
    """Conv (with a bias) + BatchNorm over the batch + conv, like MambaAD's bottleneck."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Conv(8, (3, 3))(x))
        return nn.Conv(4, (1, 1))(nn.relu(x))


class TinyReconstructor(nn.Module):
    """MambaAD's contract in miniature (what ``reconstruction.make_train_step`` relies on): a frozen ``encoder``
    and a trained part with batch statistics, outputs ``{"encoder": [features], "decoder": [features]}``."""

    @nn.compact
    def __call__(self, images, train: bool = False):
        features = jax.lax.stop_gradient(_Encoder(name="encoder")(images))
        return {"encoder": [features], "decoder": [_Decoder(name="decoder")(features, train)]}


# Encoder running statistics that float32 averaging would not keep bit for bit (unlike the initial 0 and 1).
_ENCODER_STATS = {"mean": np.random.default_rng(1).standard_normal(4).astype(np.float32),
                  "var": np.random.default_rng(2).uniform(0.5, 2.0, 4).astype(np.float32)}


def _with_encoder_statistics(variables):
    return {**variables, "batch_stats": {**variables["batch_stats"], "encoder": {"BatchNorm_0": _ENCODER_STATS}}}


@pytest.mark.parametrize("devices", DEVICES.values(), ids=DEVICES.keys())
def test_reconstruction_accumulation_averages_gradients_and_batch_statistics(devices):
    """The reconstruction loss is per image, but BatchNorm in the trained part normalises over the micro-batch, so
    the reference is the mean of the micro-batches' steps: gradients and running statistics both; the frozen
    encoder's statistics stay bit for bit."""
    batch, loss_config = _batch(12, 8), ml_collections.ConfigDict({"weight": 5.0})
    args = (reconstruction, TinyReconstructor(), loss_config, 8, batch, devices, 3, _with_encoder_statistics)
    grads, model_state, metrics, _ = _one_step(*args)
    expected, expected_state, expected_metrics = _micro_mean(*args)
    _assert_trees_close(grads, expected, "gradient")
    _assert_trees_close(model_state["batch_stats"]["decoder"], expected_state["batch_stats"]["decoder"],
                        "batch statistics")
    np.testing.assert_allclose(metrics["loss"], expected_metrics["loss"], rtol=RTOL)
    for name, value in _ENCODER_STATS.items():
        np.testing.assert_array_equal(model_state["batch_stats"]["encoder"]["BatchNorm_0"][name], value)


@pytest.mark.slow
@pytest.mark.parametrize("devices", DEVICES.values(), ids=DEVICES.keys())
def test_mambaad_accumulation_is_the_mean_of_micro_batch_steps(devices):
    """The same for a small MambaAD (ResNet18 encoder, bottleneck BatchNorm), 32 px, no stochastic depth."""
    config = make_tiny_ad_config()
    config.model.update(drop_path=0.0, decoder_dims=(32, 256, 128, 64), local_kernels=(3, 5))
    args = (reconstruction, run.build_model(config), config.loss, 32, _batch(8, 32), devices, 2)
    grads, model_state, metrics, _ = _one_step(*args)
    expected, expected_state, expected_metrics = _micro_mean(*args)
    _assert_trees_close(grads, expected, "gradient")
    _assert_trees_close(model_state["batch_stats"], expected_state["batch_stats"], "batch statistics")
    np.testing.assert_allclose(metrics["loss"], expected_metrics["loss"], rtol=RTOL)
    for a in jax.tree.leaves(grads["encoder"]):
        np.testing.assert_array_equal(a, 0.0)


def test_accumulation_needs_micro_batches_that_split_over_the_devices():
    mesh = make_mesh()
    check_grad_accum(16, 4, mesh)
    with pytest.raises(ValueError, match=r"train.batch_size=8 must be a multiple of train.grad_accum_steps \(3\) "
                                         r"x the number of devices \(4\) = 12"):
        check_grad_accum(8, 3, mesh)
    with pytest.raises(ValueError, match=r"train.grad_accum_steps=0 must be an integer >= 1"):
        check_grad_accum(8, 0, mesh)
    with pytest.raises(ValueError, match=r"train.grad_accum_steps=1.5 must be an integer >= 1"):
        classification.make_train_step(None, mesh, 1.5)


@pytest.mark.slow  # two end-to-end Experiment runs
def test_experiment_checks_and_uses_grad_accum_steps(tiny_config, tmp_path):
    with pytest.raises(ValueError, match=r"train.batch_size=8 must be a multiple of train.grad_accum_steps \(4\)"):
        run.Experiment(tiny_config(grad_accum_steps=4), tmp_path / "bad")
    losses = {}
    for accum in (1, 2):
        config = tiny_config(grad_accum_steps=accum, max_steps=3)
        with config.unlocked():
            config.loss.lambda_c = config.loss.lambda_f = 0.0
        experiment = run.Experiment(config, tmp_path / f"accum{accum}")
        experiment.train()
        log = [json.loads(line) for line in (experiment.workdir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2, 3]
        losses[accum] = [r["loss"] for r in log]
    # Step 1 sees the same parameters; later steps follow Adam updates of (nearly) the same gradients.
    np.testing.assert_allclose(losses[2][0], losses[1][0], rtol=RTOL)
    np.testing.assert_allclose(losses[2], losses[1], rtol=1e-3)
