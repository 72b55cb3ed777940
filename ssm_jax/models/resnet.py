"""ResNet / Wide ResNet encoders (torchvision v1.5 numerics), NHWC, returning multi-scale stage features.

The AD models use a pretrained ResNet as a frozen encoder; weights come from torchvision/timm through
``ssm_jax.convert``. So the layer arithmetic copies torch exactly: explicit symmetric paddings (``"SAME"`` pads
stride-2 convs asymmetrically), stride on the 3x3 conv of a bottleneck (v1.5), max-pool padded with -inf, BatchNorm
with epsilon 1e-5. Submodule names are the torch names with ``layer{i}.{j}`` spelt ``layer{i}_{j}``, so the
converter's key map stays a short table.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

RESNET_ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2), 64),
    "resnet34": ("basic", (3, 4, 6, 3), 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 128),
}

EXPANSION = {"basic": 1, "bottleneck": 4}


def stage_planes(stage: int) -> int:
    """A stage's block width before expansion: torchvision's 64, 128, 256, 512 for stages 1-4."""
    return 64 * 2 ** (stage - 1)


def stage_channels(arch: str) -> tuple[int, ...]:
    """Output channels of each stage of ``arch`` (stage 1 first): its planes x the block's expansion."""
    block, layers, _ = RESNET_ARCHS[arch]
    return tuple(stage_planes(stage) * EXPANSION[block] for stage in range(1, len(layers) + 1))

# torchvision's init: He normal (fan_out) for convs; BatchNorm scale 1, bias 0 (flax's defaults).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pad(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """torch's ``padding=kernel // 2``: the same number of rows/columns on both sides."""
    return ((kernel // 2, kernel // 2),) * 2


class Block(nn.Module):
    """One residual block: basic (3x3, 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1 to planes * 4)."""

    kind: str
    planes: int
    stride: int = 1
    width_per_group: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        def conv(features, kernel, stride, name):
            return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=_pad(kernel),
                           use_bias=False, kernel_init=conv_init, dtype=self.dtype, name=name)

        def norm(name):
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                                name=name)

        out_features = self.planes * EXPANSION[self.kind]
        if self.kind == "basic":
            convs = [(self.planes, 3, self.stride), (self.planes, 3, 1)]
        else:
            width = self.planes * self.width_per_group // 64
            convs = [(width, 1, 1), (width, 3, self.stride), (out_features, 1, 1)]
        y = x
        for i, (features, kernel, stride) in enumerate(convs, start=1):
            y = norm(f"bn{i}")(conv(features, kernel, stride, f"conv{i}")(y))
            if i < len(convs):
                y = nn.relu(y)
        if self.stride != 1 or x.shape[-1] != out_features:
            x = norm("downsample_bn")(conv(out_features, 1, self.stride, "downsample_conv")(x))
        return nn.relu(y + x)


class ResNet(nn.Module):
    """(B, H, W, 3) -> [features of each stage in ``out_stages``], stage s at stride 2^(s+1).

    Stage 1 is torchvision's ``layer1`` (stride 4), stage 4 ``layer4`` (stride 32). Only the stages up to
    ``max(out_stages)`` are built, so a (1, 2, 3) encoder has no ``layer4`` parameters (timm's
    ``features_only=True, out_indices=[1, 2, 3]``). Parameters are float32; ``dtype`` is the activation dtype.
    """

    block: str
    layers: tuple[int, ...]
    width_per_group: int = 64
    out_stages: tuple[int, ...] = (1, 2, 3)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False) -> list[jax.Array]:
        if self.block not in EXPANSION:
            raise ValueError(f"block must be one of {sorted(EXPANSION)}, got {self.block!r}")
        if not self.out_stages or not set(self.out_stages) <= set(range(1, len(self.layers) + 1)):
            raise ValueError(f"out_stages must be non-empty, within 1..{len(self.layers)}: got {self.out_stages}")
        x = nn.Conv(64, (7, 7), strides=(2, 2), padding=_pad(7), use_bias=False, kernel_init=conv_init,
                    dtype=self.dtype, name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                         name="bn1")(x)
        x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=_pad(3))  # pads with -inf
        features = {}
        for stage in range(1, max(self.out_stages) + 1):
            for j in range(self.layers[stage - 1]):
                stride = 2 if stage > 1 and j == 0 else 1
                x = Block(self.block, stage_planes(stage), stride, self.width_per_group, self.dtype,
                          name=f"layer{stage}_{j}")(x, train)
            features[stage] = x
        return [features[s] for s in self.out_stages]


def build_resnet(arch: str, out_stages: Sequence[int] = (1, 2, 3), dtype: Any = jnp.float32) -> ResNet:
    """A ResNet from ``RESNET_ARCHS`` by name, returning the features of ``out_stages``."""
    if arch not in RESNET_ARCHS:
        raise ValueError(f"unknown ResNet arch {arch!r}; valid: {sorted(RESNET_ARCHS)}")
    block, layers, width_per_group = RESNET_ARCHS[arch]
    return ResNet(block, layers, width_per_group, tuple(out_stages), dtype)


# An ImageNet-normalised pixel lies in [-2.12, 2.64]; one of a 0-255 scale left unnormalised reaches far past this.
_NORMALISED_BOUND = 10.0


def normalised_images(images, caller: str) -> jax.Array:
    """NHWC ``images`` as float32 for an ImageNet-normalised encoder, refusing what cannot be normalised pixels:
    an integer or boolean array (raw pixels: they score, but wrongly), or values beyond +-10 (a 0-255 scale)."""
    dtype = images.dtype if hasattr(images, "dtype") else np.asarray(images).dtype
    advice = ("normalise them as training does, (x / 255 - mean) / std with ImageNet's mean and std "
              "(ssm_jax.data.pipeline.normalize), or give raw pixels to a Predictor (ssm_jax.inference)")
    if not jnp.issubdtype(dtype, jnp.floating):  # jnp's: bfloat16 is a float too
        raise ValueError(f"{caller}: images are {dtype}, raw pixels; expected ImageNet-normalised float images: "
                         f"{advice}")
    images = jnp.asarray(images, jnp.float32)
    peak = float(jnp.max(jnp.abs(images))) if images.size else 0.0
    if peak > _NORMALISED_BOUND:
        raise ValueError(f"{caller}: images reach {peak:.4g}, beyond the +-{_NORMALISED_BOUND:g} of "
                         f"ImageNet-normalised pixels (a 0-255 scale?): {advice}")
    return images
