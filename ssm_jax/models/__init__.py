"""Models composed from ssm_jax.nn and ssm_jax.ssm."""

from ssm_jax.models.mambaad import MambaAD, build_mambaad, mambaad_model_config
from ssm_jax.models.memorymamba import (MemoryMamba, build_memorymamba, memorymamba_model_config,
                                        memorymamba_presets)
from ssm_jax.models.resnet import RESNET_ARCHS, ResNet, build_resnet
from ssm_jax.models.resnet_classifier import ResNetClassifier, build_resnet_classifier, resnet_model_config
from ssm_jax.models.snarm import SNARM, build_snarm, snarm_model_config

__all__ = ["MambaAD", "build_mambaad", "mambaad_model_config",
           "MemoryMamba", "build_memorymamba", "memorymamba_model_config", "memorymamba_presets",
           "RESNET_ARCHS", "ResNet", "build_resnet",
           "ResNetClassifier", "build_resnet_classifier", "resnet_model_config",
           "SNARM", "build_snarm", "snarm_model_config"]
