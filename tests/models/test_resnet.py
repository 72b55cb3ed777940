"""ResNet encoders: stage shapes per arch, stage selection, jit/grad, BatchNorm statistics in training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.models import RESNET_ARCHS, ResNet, build_resnet
from ssm_jax.models.resnet import stage_channels

KEY = jax.random.key(0, impl="rbg")  # threefry init compiles for seconds on CPU
IMAGES = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 64, 3)), jnp.float32)
CHANNELS = {"basic": (64, 128, 256, 512), "bottleneck": (256, 512, 1024, 2048)}
SMALL = dict(block="basic", layers=(1, 1, 1, 1), out_stages=(1, 2))  # cheap to compile for jit/grad tests


@pytest.mark.parametrize("arch", sorted(RESNET_ARCHS))
def test_stage_shapes(arch):
    model = build_resnet(arch, out_stages=(1, 2, 3, 4))
    variables = jax.eval_shape(model.init, KEY, IMAGES)
    features = jax.eval_shape(model.apply, variables, IMAGES)
    channels = CHANNELS[RESNET_ARCHS[arch][0]]
    assert [f.shape for f in features] == [(2, 64 // 2 ** (s + 1), 64 // 2 ** (s + 1), channels[s - 1])
                                           for s in (1, 2, 3, 4)]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    assert stage_channels(arch) == tuple(f.shape[-1] for f in features)  # what MambaAD checks its decoder against


def test_wide_bottleneck_width():
    """wide_resnet50_2 doubles the inner width of bottlenecks, not their output."""
    variables = jax.eval_shape(build_resnet("wide_resnet50_2").init, KEY, IMAGES)
    block = variables["params"]["layer1_0"]
    assert block["conv1"]["kernel"].shape == (1, 1, 64, 128)
    assert block["conv2"]["kernel"].shape == (3, 3, 128, 128)
    assert block["conv3"]["kernel"].shape == (1, 1, 128, 256)


def test_encoder_without_layer4():
    model = build_resnet("resnet50")
    variables = jax.eval_shape(model.init, KEY, IMAGES)
    assert not any(name.startswith("layer4") for name in variables["params"])
    assert "layer3_5" in variables["params"] and "layer3_6" not in variables["params"]
    assert [f.shape[-1] for f in jax.eval_shape(model.apply, variables, IMAGES)] == [256, 512, 1024]


def test_out_stages_order_and_downsample_names():
    model = ResNet(**{**SMALL, "out_stages": (2, 1)})
    variables = jax.eval_shape(model.init, KEY, IMAGES)
    assert [f.shape[-1] for f in jax.eval_shape(model.apply, variables, IMAGES)] == [128, 64]
    assert "downsample_conv" not in variables["params"]["layer1_0"]  # basic stage 1 keeps stride and width
    assert {"downsample_conv", "downsample_bn"} <= set(variables["params"]["layer2_0"])
    assert "downsample_conv" in jax.eval_shape(build_resnet("resnet50").init, KEY, IMAGES)["params"]["layer1_0"]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="resnet18"):
        build_resnet("resnet101")
    with pytest.raises(ValueError, match="out_stages"):
        jax.eval_shape(ResNet(**{**SMALL, "out_stages": (5,)}).init, KEY, IMAGES)
    with pytest.raises(ValueError, match="block"):
        jax.eval_shape(ResNet(**{**SMALL, "block": "dense"}).init, KEY, IMAGES)


def test_jit_grad_and_batch_stats():
    model = ResNet(**SMALL)
    variables = jax.jit(model.init)(KEY, IMAGES)

    def loss(params):
        features, updates = model.apply({**variables, "params": params}, IMAGES, train=True,
                                        mutable=["batch_stats"])
        return sum(jnp.mean(f ** 2) for f in features), updates

    (value, updates), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    assert np.isfinite(value)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["layer2_0"]["conv1"]["kernel"]).max()) > 0
    old, new = variables["batch_stats"]["layer1_0"]["bn1"], updates["batch_stats"]["layer1_0"]["bn1"]
    assert not np.allclose(old["mean"], new["mean"]) and not np.allclose(old["var"], new["var"])

    eval_features = jax.jit(model.apply)(variables, IMAGES)  # train=False: running averages, nothing mutable
    assert [f.shape for f in eval_features] == [(2, 16, 16, 64), (2, 8, 8, 128)]


def test_bfloat16_activations():
    model = ResNet(**{**SMALL, "dtype": jnp.bfloat16})
    variables = jax.eval_shape(model.init, KEY, IMAGES)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    assert all(f.dtype == jnp.bfloat16 for f in jax.eval_shape(model.apply, variables, IMAGES))
