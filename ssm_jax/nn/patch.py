"""Patch embedding and patch merging (Swin/VMamba style), NHWC."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class PatchEmbed(nn.Module):
    """(B, H, W, C_in) -> (B, H/p, W/p, embed_dim): non-overlapping p x p conv, then LayerNorm."""

    embed_dim: int
    patch_size: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        p = self.patch_size
        if x.shape[1] % p or x.shape[2] % p:  # a strided conv would drop the last rows and columns, defects and all
            raise ValueError(f"PatchEmbed: image sides {x.shape[1]}x{x.shape[2]} are not multiples of the patch size "
                             f"{p}; resize the images (config.data.image_size) or pick another patch size")
        x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="proj")(x)
        return nn.LayerNorm(dtype=self.dtype, name="norm")(x)


class ConvStem(nn.Module):
    """(B, H, W, C_in) -> (B, H/4, W/4, embed_dim) by two overlapping 3 x 3 stride-2 convolutions, as VMamba's v2
    patch embedding: conv to embed_dim/2, LayerNorm, GELU (exact, as torch's), conv to embed_dim, LayerNorm.

    Early convolutions instead of one patchify step are what small-data vision models are known to train better
    with; ``PatchEmbed`` is the paper's. Odd sizes round up, as with padding 1 in PyTorch.
    """

    embed_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        half = self.embed_dim // 2
        x = nn.Conv(half, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype, name="conv1")(x)
        x = nn.gelu(nn.LayerNorm(dtype=self.dtype, name="norm1")(x), approximate=False)
        x = nn.Conv(self.embed_dim, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    name="conv2")(x)
        return nn.LayerNorm(dtype=self.dtype, name="norm2")(x)


class ConvDownsample(nn.Module):
    """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim): a 3 x 3 stride-2 convolution, then LayerNorm, as
    VMamba's v3 downsampling (the overlapping alternative to ``PatchMerging``)."""

    out_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.out_dim, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    name="conv")(x)
        return nn.LayerNorm(dtype=self.dtype, name="norm")(x)


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim or 2C): concat each 2x2 cell, LayerNorm, Linear.

    Odd sizes are zero-padded at the bottom/right. Concatenation order (0,0), (1,0), (0,1), (1,1) as in Swin,
    so a converted ``reduction`` weight lines up.
    """

    out_dim: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        _, height, width, channels = x.shape
        x = jnp.pad(x, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)
        return nn.Dense(self.out_dim or 2 * channels, use_bias=False, dtype=self.dtype, name="reduction")(x)
