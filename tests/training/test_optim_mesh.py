"""Learning-rate schedule, step count, weight-decay mask and batch-size checks against hand-computed values; Adam
with L2 weight decay against PyTorch's."""

import jax
import ml_collections
import numpy as np
import pytest

from configs.common import optim_config
from ssm_jax.training.mesh import check_batch_size, make_mesh
from ssm_jax.training.optim import learning_rate_schedule, make_optimizer, training_steps, weight_decay_mask


def test_linear_warmup_then_linear_decay():
    schedule = learning_rate_schedule(optim_config(lr=1e-3, warmup_fraction=0.1), total_steps=100)
    expected = [1e-3 * s / 10 for s in range(10)] + [1e-3 * (1 - (s - 10) / 90) for s in range(10, 101)]
    # the schedule is float32
    np.testing.assert_allclose([float(schedule(s)) for s in range(101)], expected, rtol=1e-5, atol=1e-9)


def test_cosine_and_unknown_decay():
    schedule = learning_rate_schedule(optim_config(lr=1.0, warmup_fraction=0.0, decay="cosine"), total_steps=10)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 5, 10)], [1.0, 0.5, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="decay='exponential'; valid: linear, cosine, constant, step"):
        learning_rate_schedule(optim_config(decay="exponential"), 10)


def test_weight_decay_skips_biases_norms_and_ssm_dynamics():
    params = {"dense": {"kernel": np.ones((2, 3)), "bias": np.ones(3)}, "norm": {"scale": np.ones(3)},
              "ss2d": {"A_logs": np.ones((4, 2)), "Ds": np.ones(4), "x_proj_weight": np.ones((1, 2, 3))}}
    mask = weight_decay_mask(params)
    assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False},
                    "ss2d": {"A_logs": False, "Ds": False, "x_proj_weight": True}}


def test_mambaad_decays_ssm_dynamics_as_ader_does():
    """ADer decays every tensor but 1-D ones and biases, A_logs included; VMamba's default exempts A_logs."""
    from configs.mambaad_common import mambaad_config
    optim = mambaad_config("mvtec", "/nowhere", epochs=1).optim
    assert optim.grad_clip == 5.0
    params = {"ss2d": {"A_logs": np.ones((4, 2), np.float32), "Ds": np.ones(4, np.float32)},
              "conv": {"kernel": np.ones((1, 1, 2, 2), np.float32), "bias": np.ones(2, np.float32)}}
    assert weight_decay_mask(params, names=tuple(optim.no_decay)) == {
        "ss2d": {"A_logs": True, "Ds": False}, "conv": {"kernel": True, "bias": False}}
    tx = make_optimizer(optim, 10)
    updates, _ = tx.update(jax.tree.map(np.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates["ss2d"]["A_logs"], -optim.lr * 1e-4, rtol=1e-6)
    np.testing.assert_array_equal(updates["ss2d"]["Ds"], 0.0)


def test_decoupled_weight_decay_applies_to_kernels_only():
    tx = make_optimizer(optim_config(lr=0.1, warmup_fraction=0.0, decay="constant", weight_decay=0.5), 10)
    params = {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)}
    zero_grads = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], 0.0)


def test_adam_adds_l2_weight_decay_to_the_gradient_as_pytorch_does():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    kernel, bias = rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal(2).astype(np.float32)
    grads = [(rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal(2).astype(np.float32))
             for _ in range(3)]
    # PyTorch's Adam decays every tensor it is given: the bias goes in a group without decay, as ours masks it
    t_kernel, t_bias = torch.tensor(kernel, requires_grad=True), torch.tensor(bias, requires_grad=True)
    reference = torch.optim.Adam([{"params": [t_kernel], "weight_decay": 0.1}, {"params": [t_bias], "weight_decay": 0}],
                                 lr=0.01, eps=1e-8)
    tx = make_optimizer(optim_config(name="adam", lr=0.01, warmup_fraction=0.0, decay="constant", weight_decay=0.1), 10)
    params = {"dense": {"kernel": kernel, "bias": bias}}
    state = tx.init(params)
    for g_kernel, g_bias in grads:
        t_kernel.grad, t_bias.grad = torch.tensor(g_kernel), torch.tensor(g_bias)
        reference.step()
        updates, state = tx.update({"dense": {"kernel": g_kernel, "bias": g_bias}}, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    np.testing.assert_allclose(params["dense"]["kernel"], t_kernel.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params["dense"]["bias"], t_bias.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("epochs, images, batch, max_steps, steps", [
    (10, 114, 64, -1, 18),     # 10 passes over a small set: 1,152 images, not 10 steps (640 images, 5.6 passes)
    (10, 128, 64, -1, 20),     # whole batches: exact
    (40, 1968, 64, -1, 1230),  # ELPV's training split, 40 epochs
    (40, 1968, 64, 100, 100),  # max_steps caps it
])
def test_training_steps_cover_the_epochs(epochs, images, batch, max_steps, steps):
    train = ml_collections.ConfigDict({"epochs": epochs, "batch_size": batch, "max_steps": max_steps})
    assert training_steps(train, images) == steps
    assert epochs * images <= steps * batch < epochs * images + batch or max_steps > 0


def test_a_training_set_smaller_than_a_batch_is_named():
    train = ml_collections.ConfigDict({"epochs": 10, "batch_size": 64, "max_steps": -1})
    with pytest.raises(ValueError, match="the training set has 40 images, fewer than one batch of "
                                         "train.batch_size=64: pass --config.train.batch_size=40 or less"):
        training_steps(train, 40)


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="config.optim.name='sgd'; valid: adamw, adam"):
        make_optimizer(ml_collections.ConfigDict({**optim_config().to_dict(), "name": "sgd"}), 10)


def test_batch_size_must_split_over_devices():
    mesh = make_mesh()
    check_batch_size(8, mesh)
    with pytest.raises(ValueError, match=r"train.batch_size=6 must be a multiple of the number of devices \(4\)"):
        check_batch_size(6, mesh)


@pytest.mark.parametrize("warmup_fraction", [0.0, 0.2])
def test_step_decay_drops_at_fraction_of_training(warmup_fraction):
    optim = optim_config(lr=0.01, warmup_fraction=warmup_fraction, decay="step", step_fraction=0.8, step_factor=0.1)
    schedule = learning_rate_schedule(optim, total_steps=10)
    got = [float(schedule(s)) for s in range(10)]
    warmup = [0.01 * s / 2 for s in range(2)] if warmup_fraction else []
    expected = warmup + [0.01] * (8 - len(warmup)) + [0.001] * 2  # x0.1 from step round(0.8 * 10) = 8 on
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_frozen_subtree_gets_no_update_and_no_state():
    tx = make_optimizer(optim_config(lr=0.1, warmup_fraction=0.0, decay="constant", weight_decay=0.5, grad_clip=1.0),
                        10, frozen=("encoder",))
    params = {"encoder": {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)},
              "decoder": {"kernel": np.ones((2, 2), np.float32)}}
    state = tx.init(params)
    updates, _ = tx.update(jax.tree.map(np.ones_like, params), state, params)
    np.testing.assert_array_equal(updates["encoder"]["kernel"], 0.0)  # neither a step nor weight decay
    np.testing.assert_array_equal(updates["encoder"]["bias"], 0.0)
    assert np.all(np.asarray(updates["decoder"]["kernel"]) < 0)
    shapes = [x.shape for x in jax.tree.leaves(state)]
    assert shapes.count((2, 2)) == 2 and (2,) not in shapes  # Adam moments for the decoder only
    with pytest.raises(ValueError, match=r"frozen parameter subtrees \['backbone'\] not in the model"):
        make_optimizer(optim_config(), 10, frozen=("backbone",)).init(params)
