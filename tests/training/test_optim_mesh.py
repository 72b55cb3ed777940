"""Learning-rate schedule, weight-decay mask and batch-size checks against hand-computed values."""

import jax
import ml_collections
import numpy as np
import pytest

from configs.common import optim_config
from ssm_jax.training.mesh import check_batch_size, make_mesh
from ssm_jax.training.optim import learning_rate_schedule, make_optimizer, weight_decay_mask


def test_linear_warmup_then_linear_decay():
    schedule = learning_rate_schedule(optim_config(lr=1e-3, warmup_fraction=0.1), total_steps=100)
    expected = [1e-3 * s / 10 for s in range(10)] + [1e-3 * (1 - (s - 10) / 90) for s in range(10, 101)]
    np.testing.assert_allclose([float(schedule(s)) for s in range(101)], expected, rtol=1e-5, atol=1e-9)  # float32 schedule


def test_cosine_and_unknown_decay():
    schedule = learning_rate_schedule(optim_config(lr=1.0, warmup_fraction=0.0, decay="cosine"), total_steps=10)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 5, 10)], [1.0, 0.5, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="config.optim.decay='step'; valid: linear, cosine, constant"):
        learning_rate_schedule(optim_config(decay="step"), 10)


def test_weight_decay_skips_biases_norms_and_ssm_dynamics():
    params = {"dense": {"kernel": np.ones((2, 3)), "bias": np.ones(3)}, "norm": {"scale": np.ones(3)},
              "ss2d": {"A_logs": np.ones((4, 2)), "Ds": np.ones(4), "x_proj_weight": np.ones((1, 2, 3))}}
    mask = weight_decay_mask(params)
    assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False},
                    "ss2d": {"A_logs": False, "Ds": False, "x_proj_weight": True}}


def test_decoupled_weight_decay_applies_to_kernels_only():
    tx = make_optimizer(optim_config(lr=0.1, warmup_fraction=0.0, decay="constant", weight_decay=0.5), 10)
    params = {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)}
    zero_grads = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(updates["bias"], 0.0)


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="config.optim.name='sgd'; valid: adamw, adam"):
        make_optimizer(ml_collections.ConfigDict({**optim_config().to_dict(), "name": "sgd"}), 10)


def test_batch_size_must_split_over_devices():
    mesh = make_mesh()
    check_batch_size(8, mesh)
    with pytest.raises(ValueError, match=r"train.batch_size=6 must be a multiple of the number of devices \(4\)"):
        check_batch_size(6, mesh)
