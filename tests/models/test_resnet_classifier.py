"""The ResNet classifier: logits are the head of the last stage's mean-pooled features, and bad fields are named."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssm_jax.models import build_resnet
from ssm_jax.models.resnet_classifier import build_resnet_classifier, resnet_model_config


def test_logits_are_the_head_of_pooled_last_stage_features():
    model = build_resnet_classifier(resnet_model_config(3, arch="resnet18"))
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)

    @jax.jit  # one compile
    def run(images):
        variables = model.init(jax.random.PRNGKey(0), images)
        encoder = {c: tree["encoder"] for c, tree in variables.items()}
        (features,) = build_resnet("resnet18", out_stages=(4,)).apply(encoder, images)
        return variables, model.apply(variables, images)["logits"], features

    variables, logits, features = run(images)
    assert features.shape == (2, 1, 1, 512)  # stride 32
    head = jax.tree.map(lambda x: np.asarray(x, np.float64), variables["params"]["head"])
    expected = np.asarray(features, np.float64).mean(axis=(1, 2)) @ head["kernel"] + head["bias"]
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-6)


def test_bfloat16_activations_keep_float32_parameters_and_logits():
    model = build_resnet_classifier(ml_collections.ConfigDict({"num_classes": 2, "arch": "resnet18",
                                                               "dtype": "bfloat16"}))
    images = jnp.zeros((1, 32, 32, 3))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
    assert jax.eval_shape(model.apply, variables, images)["logits"].dtype == jnp.float32


@pytest.mark.parametrize("fields, message", [
    ({"num_classes": 2, "arch": "resnet101"}, r"config\.model\.arch='resnet101'; valid: resnet18, resnet34"),
    ({"num_classes": 2, "depth": 3}, r"unknown config\.model fields \['depth'\]; valid: \['arch', 'dtype'"),
])
def test_bad_fields_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        build_resnet_classifier(fields)


def test_unknown_config_field_is_named():
    with pytest.raises(ValueError, match=r"resnet_model_config: unknown fields \['depth'\]"):
        resnet_model_config(2, depth=3)
