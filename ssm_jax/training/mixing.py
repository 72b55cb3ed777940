"""Mixup and CutMix for classification training (``config.loss.mixup_alpha``, ``config.loss.cutmix_alpha``): each step
blends every image with its partner, its neighbour in the batch (images 0 and 1, 2 and 3, ...), by a weight lam ~
Beta(alpha, alpha) over the whole image (mixup, Zhang et al. 2018) or as a pasted box of area 1 - lam (CutMix, Yun
et al. 2019), and the loss mixes the two labels' terms by the same lam. With both alphas set, each step picks one of
the two at even odds, as the VMamba/DeiT recipes do. Drawn from the step's key on device, so a resumed run mixes
exactly as an uninterrupted one. Partners are neighbours, not the batch reversed, so that with an even batch per
device no image crosses devices.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Mixed(NamedTuple):
    images: jax.Array  # (B, H, W, C) the blended images
    partner: jax.Array  # (B,) int32: the label of each image's partner (``swap_pairs``)
    lam: jax.Array  # () float32: the share of each image's own label in its target


def check_alphas(mixup_alpha: float, cutmix_alpha: float) -> None:
    for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if not alpha >= 0:
            raise ValueError(f"config.loss.{name}={alpha}; expected a value >= 0 (0: off; 0.8 mixup and 1.0 "
                             f"CutMix in the DeiT/VMamba recipes)")


def swap_pairs(x):
    """``x`` with neighbours (0, 1), (2, 3), ... swapped along axis 0; an odd last one stays (mixed with itself). A
    reshape within the batch axis, so a batch sharded over devices in even shards is swapped without moving data
    between devices (reversing the batch would send every shard to another device, every step)."""
    b = x.shape[0]
    even = b - b % 2
    swapped = x[:even].reshape(even // 2, 2, *x.shape[1:])[:, ::-1].reshape(even, *x.shape[1:])
    return swapped if even == b else jnp.concatenate([swapped, x[even:]])


def cut_box_mask(key, height: int, width: int, lam):
    """(H, W) float mask, 1 inside a box of about (1 - lam) of the image at a uniform random centre (clipped at the
    borders, as CutMix does), and the lam that box really leaves: 1 - its area / (H W)."""
    cy_key, cx_key = jax.random.split(key)
    cut = jnp.sqrt(1.0 - lam)
    half_h, half_w = jnp.round(height * cut) / 2, jnp.round(width * cut) / 2
    cy = jax.random.uniform(cy_key, (), maxval=height)
    cx = jax.random.uniform(cx_key, (), maxval=width)
    top, bottom = jnp.clip(jnp.round(cy - half_h), 0, height), jnp.clip(jnp.round(cy + half_h), 0, height)
    left, right = jnp.clip(jnp.round(cx - half_w), 0, width), jnp.clip(jnp.round(cx + half_w), 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    mask = ((rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)).astype(jnp.float32)
    return mask, 1.0 - mask.mean()


def mix_batch(key, images, labels, mixup_alpha: float, cutmix_alpha: float) -> Mixed:
    """The batch mixed as the alphas ask (at least one > 0), each image with its ``swap_pairs`` partner."""
    choice_key, lam_key, box_key = jax.random.split(key, 3)
    partner_images, partner = swap_pairs(images), swap_pairs(labels).astype(jnp.int32)

    def mixup():
        lam = jax.random.beta(lam_key, mixup_alpha, mixup_alpha)
        blended = lam * images.astype(jnp.float32) + (1 - lam) * partner_images.astype(jnp.float32)
        return blended.astype(images.dtype), lam

    def cutmix():
        mask, lam = cut_box_mask(box_key, images.shape[1], images.shape[2],
                                 jax.random.beta(lam_key, cutmix_alpha, cutmix_alpha))
        return jnp.where(mask[None, :, :, None] > 0, partner_images, images), lam

    if mixup_alpha > 0 and cutmix_alpha > 0:
        mixed, lam = jax.lax.cond(jax.random.bernoulli(choice_key), cutmix, mixup)
    else:
        mixed, lam = mixup() if mixup_alpha > 0 else cutmix()
    return Mixed(mixed, partner, jnp.asarray(lam, jnp.float32))


def dominant_labels(labels, mixed: Mixed):
    """Per image, the label with the larger share: the labels of MemoryMamba's memory losses and of the training
    accuracy, which take one class per image."""
    return jnp.where(mixed.lam >= 0.5, labels.astype(jnp.int32), mixed.partner)
