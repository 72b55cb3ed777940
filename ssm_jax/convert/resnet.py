"""torchvision / timm ResNet and Wide ResNet state dicts -> ``ssm_jax.models.ResNet`` variables."""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssm_jax.convert.common import ConversionError, Rule, batchnorm_rules, convert_state_dict
from ssm_jax.models.resnet import RESNET_ARCHS, build_resnet


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
    try:
        variables = convert_state_dict(state, RESNET_RULES, template, ignore=RESNET_IGNORE + unbuilt)
    except ConversionError as err:
        from ssm_jax.convert.mambaad import ENCODER_PREFIX, holds_official_encoder  # it imports this module
        if not prefix and holds_official_encoder(state):
            raise err.naming(
                f"the checkpoint is an official MambaAD one (its encoder under {ENCODER_PREFIX!r}): from_torch("
                f"'mambaad', path) converts the whole detector; its ImageNet encoder alone: from_torch({arch!r}, path, "
                f"prefix={ENCODER_PREFIX!r}, out_stages=(1, 2, 3))") from None
        held, archs = resnet_held(state)
        if held and arch not in archs:
            raise err.naming(f"the checkpoint holds {held}, not a {arch}") from None
        last = max((int(m[1]) for key in state if (m := re.match(r"layer(\d)\.", key))), default=0)
        if held and 0 < last < max(out_stages):
            raise err.naming(f"the checkpoint stops at layer{last} (a cut backbone): convert it with "
                             f"out_stages={tuple(range(1, last + 1))}, e.g. from_torch({arch!r}, path, "
                             f"out_stages={tuple(range(1, last + 1))})") from None
        raise
    return ml_collections.ConfigDict({"arch": arch, "out_stages": tuple(out_stages)}), variables


def resnet_held(state: Mapping[str, np.ndarray]) -> tuple[str, list[str]]:
    """(what the torchvision-layout keys of ``state`` hold, e.g. "a resnet50 (bottleneck blocks, 3-4-6-3)", and the
    ``RESNET_ARCHS`` that fit it), read from block indices and widths; ("", []) without ResNet stages. A backbone cut
    after stage 3 fits every arch whose first three stages it matches."""
    depths: dict[int, int] = {}
    for key in state:
        if match := re.fullmatch(r"layer(\d)\.(\d+)\.conv1\.weight", key):
            depths[int(match[1])] = max(depths.get(int(match[1]), 0), int(match[2]) + 1)
    if not depths:
        return "", []
    block = "bottleneck" if any(re.fullmatch(r"layer\d\.\d+\.conv3\.weight", key) for key in state) else "basic"
    stages = tuple(depths[stage] for stage in sorted(depths))
    first = state.get("layer1.0.conv1.weight")  # in a bottleneck of stage 1: width_per_group out channels
    width = int(np.shape(first)[0]) if block == "bottleneck" and first is not None else 64
    archs = [name for name, (kind, layers, width_per_group) in RESNET_ARCHS.items()
             if kind == block and layers[:len(stages)] == stages and width_per_group == width]
    layout = f"{block} blocks, {'-'.join(map(str, stages))}" + (f", width {width}" if width != 64 else "")
    return (f"a {' or '.join(archs)} ({layout})" if archs else f"a ResNet of {layout} (none of "
            f"{', '.join(RESNET_ARCHS)})"), archs
