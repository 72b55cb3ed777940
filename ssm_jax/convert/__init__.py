"""PyTorch state_dict -> Flax variables, one converter per source model, key maps as data.

Usage::

    from ssm_jax.convert import from_torch
    from ssm_jax.models import build_resnet

    config, variables = from_torch("wide_resnet50_2", "wide_resnet50_2-9ba9bcbe.pth")
    features = build_resnet(config.arch, config.out_stages).apply(variables, images)  # NHWC, float32

A converter takes the loaded state dict ({torch key: numpy array}) and returns (config, variables); adding a source
model is one entry in ``CONVERTERS``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import ml_collections
import numpy as np

from ssm_jax.convert.common import TRANSFORMS, ConversionError, Rule, convert_state_dict, load_state_dict
from ssm_jax.convert.mambaad import MAMBAAD_RULES, convert_mambaad
from ssm_jax.convert.resnet import RESNET_RULES, convert_resnet
from ssm_jax.models.resnet import RESNET_ARCHS

Converter = Callable[[dict[str, np.ndarray]], tuple[ml_collections.ConfigDict, dict]]

CONVERTERS: dict[str, Converter] = {
    **{arch: functools.partial(convert_resnet, arch=arch) for arch in RESNET_ARCHS},
    "mambaad": convert_mambaad,
}


def from_torch(kind: str, path_or_state_dict, **options) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, variables) of a ``kind`` model from a torch checkpoint path or state dict; ``options`` go to its
    converter (a ResNet's ``out_stages``, e.g. (1, 2, 3) for a backbone cut after layer3, and ``prefix``)."""
    if kind not in CONVERTERS:
        raise ValueError(f"unknown model kind {kind!r}; valid: {sorted(CONVERTERS)}")
    try:
        return CONVERTERS[kind](load_state_dict(path_or_state_dict), **options)
    except ConversionError as err:  # name the file: a script converting several would not say which one failed
        if isinstance(path_or_state_dict, (str, os.PathLike)):
            raise err.of(str(Path(path_or_state_dict).expanduser())) from None
        raise


__all__ = ["CONVERTERS", "TRANSFORMS", "ConversionError", "MAMBAAD_RULES", "RESNET_RULES", "Rule", "convert_mambaad",
           "convert_resnet", "convert_state_dict", "from_torch", "load_state_dict"]
