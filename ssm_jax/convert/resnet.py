"""torchvision / timm ResNet and Wide ResNet state dicts -> ``ssm_jax.models.ResNet`` variables."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssm_jax.convert.common import Rule, batchnorm_rules, convert_state_dict
from ssm_jax.models.resnet import build_resnet


RESNET_RULES = [
    Rule(r"conv1\.weight", "params/conv1/kernel", "conv"),
    *batchnorm_rules(r"bn1", "bn1"),
    Rule(r"layer(\d)\.(\d+)\.conv(\d)\.weight", "params/layer{1}_{2}/conv{3}/kernel", "conv"),
    *batchnorm_rules(r"layer(\d)\.(\d+)\.bn(\d)", "layer{1}_{2}/bn{3}"),
    Rule(r"layer(\d)\.(\d+)\.downsample\.0\.weight", "params/layer{1}_{2}/downsample_conv/kernel", "conv"),
    *batchnorm_rules(r"layer(\d)\.(\d+)\.downsample\.1", "layer{1}_{2}/downsample_bn"),
]

RESNET_IGNORE = [r".*num_batches_tracked", r"fc\..*"]  # the classification head is not part of the encoder


def convert_resnet(state: dict[str, np.ndarray], arch: str, out_stages: Sequence[int] = (1, 2, 3, 4),
                   prefix: str = "") -> tuple[ml_collections.ConfigDict, dict]:
    """Variables of ``build_resnet(arch, out_stages)`` from the torch keys under ``prefix`` (stripped).

    ``prefix`` selects a sub-network, e.g. ``"net_t."`` for the encoder in a MambaAD checkpoint; other keys are
    left out. Stages past ``max(out_stages)`` are not built, so their torch keys are ignored.
    """
    model = build_resnet(arch, out_stages)
    state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    template = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    unbuilt = [rf"layer{stage}\..*" for stage in range(max(out_stages) + 1, len(model.layers) + 1)]
    variables = convert_state_dict(state, RESNET_RULES, template, ignore=RESNET_IGNORE + unbuilt)
    return ml_collections.ConfigDict({"arch": arch, "out_stages": tuple(out_stages)}), variables
