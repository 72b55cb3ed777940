"""Masked-image pretraining of a MemoryMamba backbone (SimMIM: Xie et al., CVPR 2022), for data without labels.

Square patches of ``mask_patch`` pixels are chosen at random, ``mask_ratio`` of them per image; their embedded
patches are replaced by a learned token (``MemoryMamba(token_mask=...)``); a linear decoder maps each position of
the last stage's feature map back to the ``stride x stride x 3`` pixels it covers, and the loss is the mean absolute
error over the masked pixels only. The backbone's parameters then initialise a classifier of the same shape
(``config.train.init_from``, ``training.init_from``): the network has first learnt the images' structure from the
images themselves, which on a small dataset with no pretrained weights at hand is the one source of more signal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


def random_mask(key, batch: int, grid: tuple[int, int], ratio: float):
    """(batch, *grid) bool, exactly round(ratio * cells) cells True per image, uniformly at random."""
    cells = grid[0] * grid[1]
    masked = int(round(ratio * cells))
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch, cells)), axis=1), axis=1)
    return (ranks < masked).reshape(batch, *grid)


def upsample_mask(mask, factor: int):
    """(B, h, w) -> (B, h * factor, w * factor), each cell repeated over a factor x factor square."""
    return jnp.repeat(jnp.repeat(mask, factor, axis=1), factor, axis=2)


def masked_l1(reconstruction, images, pixel_mask):
    """Per image, the mean absolute error over the masked pixels and channels; (B,) float32."""
    weight = pixel_mask[..., None].astype(jnp.float32)
    error = jnp.abs(reconstruction.astype(jnp.float32) - images.astype(jnp.float32)) * weight
    return error.sum(axis=(1, 2, 3)) / jnp.maximum(weight.sum(axis=(1, 2, 3)) * images.shape[-1], 1.0)


class MaskedImageModel(nn.Module):
    """A backbone (MemoryMamba) with SimMIM's linear pixel decoder; NHWC images (and a mask) -> dict.

    ``mask`` (B, H / mask_patch, W / mask_patch) bool, True where hidden; None hides nothing (initialisation and
    plain reconstruction). Outputs: ``reconstruction`` (B, H, W, 3) float32 and ``pixel_mask`` (B, H, W) bool.
    """

    backbone: nn.Module
    mask_patch: int = 32

    @nn.compact
    def __call__(self, images, train: bool = False, mask=None):
        batch, height, width, channels = images.shape
        patch = self.backbone.patch_size
        if self.mask_patch % patch or height % self.mask_patch or width % self.mask_patch:
            raise ValueError(f"MaskedImageModel: mask_patch={self.mask_patch} must be a multiple of the backbone's "
                             f"patch_size={patch} and divide the image size {height}x{width}")
        grid = (height // self.mask_patch, width // self.mask_patch)
        if mask is None:
            mask = jnp.zeros((batch, *grid), bool)
        if mask.shape != (batch, *grid):
            raise ValueError(f"MaskedImageModel: mask has shape {mask.shape}, expected {(batch, *grid)}")
        features = self.backbone(images, train=train,
                                 token_mask=upsample_mask(mask, self.mask_patch // patch))["feature_map"]
        stride = height // features.shape[1]
        pixels = nn.Dense(stride * stride * channels, name="decoder")(features.astype(jnp.float32))
        h, w = features.shape[1:3]
        reconstruction = pixels.reshape(batch, h, w, stride, stride, channels).transpose(0, 1, 3, 2, 4, 5)
        return {"reconstruction": reconstruction.reshape(batch, height, width, channels),
                "pixel_mask": upsample_mask(mask, self.mask_patch)}
