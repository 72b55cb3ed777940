"""Optimizers from ``config.optim``: AdamW with linear warm-up then linear (or cosine) decay, as the papers use."""

from __future__ import annotations

import jax
import optax
from flax import traverse_util

# Parameters that are never weight-decayed: SSM dynamics (A_logs, Ds), biases, norm scales.
_NO_DECAY_NAMES = ("A_log", "A_logs", "D", "Ds", "bias", "scale")


def learning_rate_schedule(optim, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 over ``warmup_fraction`` of the steps, then linear or cosine decay to ``end_lr``."""
    warmup = int(round(optim.warmup_fraction * total_steps))
    decay_steps = max(total_steps - warmup, 1)
    if optim.decay == "linear":
        decay = optax.linear_schedule(optim.lr, optim.end_lr, decay_steps)
    elif optim.decay == "cosine":
        decay = optax.cosine_decay_schedule(optim.lr, decay_steps, alpha=optim.end_lr / optim.lr if optim.lr else 0.0)
    elif optim.decay == "constant":
        decay = optax.constant_schedule(optim.lr)
    else:
        raise ValueError(f"config.optim.decay={optim.decay!r}; valid: linear, cosine, constant")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warmup), decay], [warmup])


def weight_decay_mask(params):
    """True for parameters that get weight decay: matrices and kernels, not biases, norms or SSM dynamics."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: k[-1] not in _NO_DECAY_NAMES and v.ndim > 1 for k, v in flat.items()})


def make_optimizer(optim, total_steps: int) -> optax.GradientTransformation:
    """The optimizer named by ``config.optim.name`` (adamw or adam), with optional global-norm clipping."""
    schedule = learning_rate_schedule(optim, total_steps)
    if optim.name == "adamw":
        tx = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay,
                         mask=weight_decay_mask)
    elif optim.name == "adam":
        tx = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
    else:
        raise ValueError(f"config.optim.name={optim.name!r}; valid: adamw, adam")
    if optim.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
    return tx


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
