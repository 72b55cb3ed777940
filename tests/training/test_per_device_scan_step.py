"""The classification train step with the Pallas scan (interpret mode) on 4 devices: the kernel runs per device
inside the step (``traced_on``) and the gradient equals the 1-device step's."""

import jax
import pytest

from ssm_jax.training import classification, run
from ssm_jax.training import state as state_lib
from ssm_jax.training.mesh import make_mesh, shard_batch
from tests.training.conftest import make_tiny_config
from tests.training.test_grad_accum import _assert_trees_close, _batch, _one_step, gradient_recorder


# interpret-mode Pallas inside two compiled train steps; tests/kernels/test_per_device.py is the fast check
@pytest.mark.slow
def test_pallas_step_on_four_devices_matches_one(folder_root):
    config = make_tiny_config(folder_root)
    with config.unlocked():
        config.model.scan_impl = "pallas"
    loss = config.loss.copy_and_resolve_references()
    loss.lambda_c = loss.lambda_f = 0.0  # batch-dependent memory terms off: the loss is a mean over images
    model, image_size, batch = run.build_model(config), config.data.image_size, _batch(8, config.data.image_size)

    mesh = make_mesh(jax.devices()[:4])
    state = state_lib.create_state(model, gradient_recorder(), jax.random.PRNGKey(0), image_size, mesh)
    jaxpr = str(classification.make_train_step(loss, mesh).trace(state, shard_batch(batch, mesh)).jaxpr)
    assert jaxpr.count("shard_map") >= 2, "forward and backward kernels should each run per device"

    one, _, one_metrics, _ = _one_step(classification, model, loss, image_size, batch, 1, 1)
    four, _, four_metrics, _ = _one_step(classification, model, loss, image_size, batch, 4, 1)
    _assert_trees_close(four, one, "gradient")
    assert abs(four_metrics["loss"] - one_metrics["loss"]) <= 1e-5 * abs(one_metrics["loss"])
