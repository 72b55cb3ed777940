"""Layer-wise learning-rate decay (``config.optim.layer_decay``) for fine-tuning a pretrained backbone.

BEiT's and SimMIM's fine-tuning recipe: the head trains at the full rate and each block below it at ``decay`` times
the rate of the block above, so the pretrained early features move least. A parameter of layer i of n blocks
(``models.memorymamba.layer_ids``: the patch embedding 0, the blocks 1..n, the head n + 1) is scaled by
``decay ** (n + 1 - i)``.

Applied to the optimizer's final updates, so with AdamW both the step and the decoupled weight decay are scaled,
as a per-group learning rate scales them in PyTorch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ssm_jax.models.memorymamba import layer_ids, stack_blocks, unstack_blocks


def check_layer_decay(decay: float) -> None:
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"config.optim.layer_decay={decay}; expected a value in (0, 1] (1: off; BEiT and SimMIM "
                         f"fine-tune with 0.65-0.9)")


def layer_scales(params, decay: float) -> dict:
    """The factor each parameter's update is multiplied by, one broadcastable leaf per parameter leaf; in either
    block layout (a ``scan_blocks`` stage gets one factor per block along its leading axis)."""
    per_block = unstack_blocks(params)
    ids, total = layer_ids(per_block)
    scales = {name: jax.tree.map(lambda leaf, e=total + 1 - ids[name]: jnp.full((1,) * leaf.ndim, decay ** e,
                                                                                jnp.float32), value)
              for name, value in per_block.items()}
    return scales if per_block.keys() == params.keys() else stack_blocks(scales)


def scale_by_layer(decay: float) -> optax.GradientTransformation:
    """Multiplies each update by its layer's factor (module docstring); stateless. ``init`` refuses parameters whose
    layers it cannot number (another model than MemoryMamba)."""
    check_layer_decay(decay)

    def update(updates, state, params=None):
        del params
        scales = layer_scales(updates, decay)
        return jax.tree.map(lambda u, s: (u * s).astype(u.dtype), updates, scales), state

    def init(params):  # the parameters' layers known at the start, not at the first step
        try:
            layer_ids(unstack_blocks(params))
        except ValueError as err:
            raise ValueError(f"config.optim.layer_decay={decay} numbers MemoryMamba's blocks, and this model's "
                             f"parameters are not MemoryMamba's ({err}); leave it 1.0") from err
        return optax.EmptyState()

    return optax.GradientTransformation(init, update)
