"""Test-time augmentation for classification (``config.eval.tta``): class probabilities averaged over
label-preserving views of each image. Inspection images with no preferred orientation (ELPV's solar cells, steel
surface patches) keep their label under mirrors and 90-degree rotations, the augmentations their training used."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# mode -> number of views
TTA_MODES = {"none": 1, "flips": 4, "d4": 8}


def check_mode(tta: str) -> None:
    if tta not in TTA_MODES:
        raise ValueError(f"config.eval.tta={tta!r}; valid: {', '.join(TTA_MODES)} (none: the image alone; flips: "
                         f"it and its three mirrors; d4: its four 90-degree rotations and theirs mirrored)")


def views(images: jax.Array, tta: str) -> jax.Array:
    """(V, batch, H, W, C): the views of NHWC ``images``. none: the images; flips: identity, left-right, up-down,
    both; d4: the four 90-degree rotations of the image, then of its left-right mirror (square images only)."""
    check_mode(tta)
    if tta == "none":
        return images[None]
    if tta == "flips":
        return jnp.stack([images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]])
    height, width = images.shape[1:3]
    if height != width:
        raise ValueError(f"config.eval.tta='d4' rotates by 90 degrees, so it needs square images; these are "
                         f"{height}x{width}. Use 'flips' for non-square images.")
    mirror = images[:, :, ::-1]
    return jnp.stack([jnp.rot90(x, k, axes=(1, 2)) for x in (images, mirror) for k in range(4)])


def mean_probs(logits_fn, images: jax.Array, tta: str) -> jax.Array:
    """softmax(logits_fn(view)) averaged over the views of ``images`` (batch, K). The views run one after another
    (``lax.map``), so memory stays that of one batch and the model is compiled once."""
    return jax.lax.map(lambda view: jax.nn.softmax(logits_fn(view), axis=-1), views(images, tta)).mean(0)
