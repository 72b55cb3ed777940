"""A ResNet image classifier (torchvision's layout: the backbone, global average pooling, one linear layer).

The convolutional baseline for the classification datasets: trained with the same data, recipe and evaluation as
MemoryMamba, from scratch or from a torchvision ImageNet checkpoint of its backbone (``config.model.encoder_weights``,
converted by ``ssm_jax.convert``), so a run says what a CNN gets where a paper quotes one.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from ssm_jax.models.fields import model_fields, with_defaults
from ssm_jax.models.resnet import RESNET_ARCHS, build_resnet

MODEL_DEFAULTS = {"arch": "resnet34", "encoder_weights": "", "dtype": "float32"}


class ResNetClassifier(nn.Module):
    """(B, H, W, 3) -> {"logits": (B, num_classes) float32}. The backbone is ``encoder`` (the AD models' name for
    a ResNet, so one weight loader serves both) and the linear layer ``head`` (left out by ``train.init_from``)."""

    arch: str
    num_classes: int
    dtype: Any = jnp.float32

    def setup(self):
        self.encoder = build_resnet(self.arch, out_stages=(4,), dtype=self.dtype)  # layer4, stride 32
        self.head = nn.Dense(self.num_classes)

    def __call__(self, x, train: bool = False) -> dict:
        (features,) = self.encoder(x.astype(self.dtype), train)
        pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2))
        return {"logits": self.head(pooled).astype(jnp.float32)}


def resnet_model_config(num_classes: int, **overrides) -> ml_collections.ConfigDict:
    """A ``config.model`` ConfigDict with every field ``build_resnet_classifier`` reads, at its default."""
    return with_defaults(MODEL_DEFAULTS, overrides, "resnet_model_config", num_classes=num_classes)


def build_resnet_classifier(config) -> ResNetClassifier:
    """The classifier from a ``config.model``-style mapping: arch (``RESNET_ARCHS``), num_classes, dtype
    ("float32" | "bfloat16" activations; parameters stay float32). ``encoder_weights`` is read by the train state."""
    fields = model_fields(config, MODEL_DEFAULTS, "build_resnet_classifier", required=("num_classes",))
    if fields["arch"] not in RESNET_ARCHS:
        raise ValueError(f"config.model.arch={fields['arch']!r}; valid: {', '.join(RESNET_ARCHS)}")
    return ResNetClassifier(fields["arch"], int(fields["num_classes"]), fields["dtype"])
