"""Models composed from ssm_jax.nn and ssm_jax.ssm."""

from ssm_jax.models.memorymamba import (MemoryMamba, build_memorymamba, memorymamba_model_config,
                                        memorymamba_presets)
from ssm_jax.models.resnet import RESNET_ARCHS, ResNet, build_resnet

__all__ = ["MemoryMamba", "build_memorymamba", "memorymamba_model_config", "memorymamba_presets",
           "RESNET_ARCHS", "ResNet", "build_resnet"]
