"""Layer-wise learning-rate decay (``config.optim.layer_decay``) for fine-tuning a pretrained backbone.

BEiT's and SimMIM's fine-tuning recipe: the head trains at the full rate and each block below it at ``decay`` times
the rate of the block above, so the pretrained early features move least. Layers are counted as in SimMIM's Swin:
the patch embedding (and the mask token) is layer 0, the blocks are 1..n in order over all stages, a stage's
downsampling shares the layer of the block before it, and everything after the last block (final norm, head) is
layer n + 1, at the full rate. A parameter of layer i is scaled by ``decay ** (n + 1 - i)``.

Applied to the optimizer's final updates, so with AdamW both the step and the decoupled weight decay are scaled,
as a per-group learning rate scales them in PyTorch.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax

_EMBEDDING = ("patch_embed", "mask_token")
_TOP = ("norm", "head")
_BLOCK = re.compile(r"stage(\d+)_block(\d+)")
_BLOCKS = re.compile(r"stage(\d+)_blocks")
_DOWNSAMPLE = re.compile(r"stage(\d+)_downsample")


def check_layer_decay(decay: float) -> None:
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"config.optim.layer_decay={decay}; expected a value in (0, 1] (1: off; BEiT and SimMIM "
                         f"fine-tune with 0.65-0.9)")


def _stage_depths(params) -> dict[int, int]:
    """Blocks per stage, from the per-block names or the stacked layout's leading axis."""
    depths: dict[int, int] = {}
    for name, value in params.items():
        if match := _BLOCK.fullmatch(name):
            stage = int(match[1])
            depths[stage] = max(depths.get(stage, 0), int(match[2]) + 1)
        elif match := _BLOCKS.fullmatch(name):
            leading = {leaf.shape[0] for leaf in jax.tree.leaves(value)}
            if len(leading) != 1:
                raise ValueError(f"layer decay: the stacked blocks {name!r} have leading sizes {sorted(leading)}; "
                                 f"expected one (the stage's depth)")
            depths[int(match[1])] = leading.pop()
    return depths


def layer_ids(params) -> tuple[dict, int]:
    """(each top-level entry of a MemoryMamba parameter dict -> its layer, the number of blocks n). A layer is an
    int, or for a stacked stage (``scan_blocks``) an int array over its blocks."""
    depths = _stage_depths(params)
    first = {stage: 1 + sum(d for s, d in depths.items() if s < stage) for stage in depths}
    total = sum(depths.values())
    ids = {}
    for name in params:
        if name in _EMBEDDING:
            ids[name] = 0
        elif name in _TOP:
            ids[name] = total + 1
        elif match := _BLOCK.fullmatch(name):
            ids[name] = first[int(match[1])] + int(match[2])
        elif match := _BLOCKS.fullmatch(name):
            stage = int(match[1])
            ids[name] = first[stage] + jnp.arange(depths[stage])
        elif (match := _DOWNSAMPLE.fullmatch(name)) and int(match[1]) in first:
            ids[name] = first[int(match[1])] - 1
        else:
            raise ValueError(f"layer decay: no layer for the parameters {name!r}; it knows MemoryMamba's "
                             f"{', '.join(_EMBEDDING + _TOP)}, stage<s>_block<j>, stage<s>_blocks and "
                             f"stage<s>_downsample (config.optim.layer_decay=1.0 turns it off)")
    return ids, total


def layer_scales(params, decay: float) -> dict:
    """The factor each parameter's update is multiplied by, one leaf per parameter leaf (broadcastable)."""
    ids, total = layer_ids(params)
    out = {}
    for name, value in params.items():
        scale = jnp.asarray(decay, jnp.float32) ** (total + 1 - jnp.asarray(ids[name], jnp.float32))
        out[name] = jax.tree.map(lambda leaf, s=scale: s.reshape(s.shape + (1,) * (leaf.ndim - s.ndim)), value)
    return out


def scale_by_layer(decay: float) -> optax.GradientTransformation:
    """Multiplies each update by its layer's factor (module docstring); stateless."""
    check_layer_decay(decay)

    def update(updates, state, params=None):
        del params
        scales = layer_scales(updates, decay)
        return jax.tree.map(lambda u, s: (u * s).astype(u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
