"""Reusable Flax linen layers: S6 mixer, SS2D, patch embed/merge and their convolutional forms, MLP, stochastic
depth, a Dense computed per output block."""

from ssm_jax.nn.drop import DropPath
from ssm_jax.nn.mamba import MambaMixer
from ssm_jax.nn.mlp import Mlp
from ssm_jax.nn.patch import ConvDownsample, ConvStem, PatchEmbed, PatchMerging
from ssm_jax.nn.split_dense import SplitDense
from ssm_jax.nn.ss2d import SS2D

__all__ = ["ConvDownsample", "ConvStem", "DropPath", "MambaMixer", "Mlp", "PatchEmbed", "PatchMerging", "SS2D",
           "SplitDense"]
