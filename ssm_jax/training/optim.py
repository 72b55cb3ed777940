"""Optimizers from ``config.optim``: AdamW (or Adam with L2 weight decay) with linear warm-up then linear, cosine or
step decay, as the papers use; optionally with frozen parameter subtrees. And the step count of a run."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import optax

from ssm_jax.training.ema import check_decay, param_ema
from ssm_jax.training.layer_decay import check_layer_decay, scale_by_layer

# Parameters not weight-decayed by default (``config.optim.no_decay``): SSM dynamics (A_logs, Ds), biases, norm
# scales, as VMamba trains; MambaAD's official code (ADer) decays every tensor but biases and 1-D ones.
NO_DECAY_NAMES = ("A_log", "A_logs", "D", "Ds", "bias", "scale")


def training_steps(train, num_images: int) -> int:
    """The steps of ``train.epochs`` passes over ``num_images`` at ``train.batch_size`` (the last batch rounded up,
    as the stream of shuffled epochs runs on), at most ``train.max_steps`` when that is set. Counting only whole
    batches per epoch would cut short a small training set: 114 images at batch 64 would be 10 steps for 10 epochs,
    5.6 passes, and no warm-up step."""
    if num_images < train.batch_size:
        raise ValueError(f"the training set has {num_images} images, fewer than one batch of "
                         f"train.batch_size={train.batch_size}: pass --config.train.batch_size={num_images} or less")
    steps = -(-train.epochs * num_images // train.batch_size)
    return min(steps, train.max_steps) if train.max_steps > 0 else steps


def learning_rate_schedule(optim, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 over ``warmup_fraction`` of the steps, then linear or cosine decay to ``end_lr``,
    a constant rate, or a step: ``lr * step_factor`` from step ``round(step_fraction * total_steps)`` on
    (MambaAD: x0.1 at 80% of training)."""
    warmup = int(round(optim.warmup_fraction * total_steps))
    decay_steps = max(total_steps - warmup, 1)
    if optim.decay == "linear":
        decay = optax.linear_schedule(optim.lr, optim.end_lr, decay_steps)
    elif optim.decay == "cosine":
        decay = optax.cosine_decay_schedule(optim.lr, decay_steps, alpha=optim.end_lr / optim.lr if optim.lr else 0.0)
    elif optim.decay == "constant":
        decay = optax.constant_schedule(optim.lr)
    elif optim.decay == "step":
        drop = max(int(round(optim.step_fraction * total_steps)) - warmup, 0)  # counted from the warm-up's end
        decay = optax.piecewise_constant_schedule(optim.lr, {drop: optim.step_factor})
    else:
        raise ValueError(f"config.optim.decay={optim.decay!r}; valid: linear, cosine, constant, step")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, optim.lr, warmup), decay], [warmup])


def weight_decay_mask(params, names: Sequence[str] = NO_DECAY_NAMES):
    """True for parameters that get weight decay: tensors of two or more axes not named in ``names`` (by default
    matrices and kernels, not biases, norms or SSM dynamics).

    A tree map, so subtrees another transform masked out (optax's empty ``MaskedNode``) pass through unchanged.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, x: getattr(path[-1], "key", None) not in names and x.ndim > 1, params)


def frozen_labels(params, frozen: Sequence[str]):
    """"frozen" for every leaf under a top-level key in ``frozen``, "train" elsewhere; unknown keys are an error."""
    unknown = sorted(set(frozen) - set(params))
    if unknown:
        raise ValueError(f"frozen parameter subtrees {unknown} not in the model; top-level keys: {sorted(params)}")
    return {k: jax.tree.map(lambda _: "frozen" if k in frozen else "train", v) for k, v in params.items()}


def make_optimizer(optim, total_steps: int, frozen: Sequence[str] = ()) -> optax.GradientTransformation:
    """The optimizer named by ``config.optim.name``, with optional global-norm clipping: ``adamw`` (weight decay
    decoupled from the gradient, Loshchilov & Hutter) or ``adam`` (weight decay as an L2 term in the gradient, as
    PyTorch's ``Adam(weight_decay=...)``; paper 000 names Adam with weight decay 0.01, which could be either).

    Top-level parameter subtrees named in ``frozen`` (e.g. a pretrained encoder) get zero updates: no gradient
    step and no weight decay, and no optimizer state; clipping sees only the trained parameters. With
    ``layer_decay`` < 1 each block's updates shrink with its distance from the head (``training.layer_decay``:
    fine-tuning a pretrained backbone). With ``ema_decay`` > 0 the optimizer also tracks the parameters' moving
    average, which evaluation then uses (``training.ema``).
    """
    check_decay(optim.ema_decay)
    check_layer_decay(optim.layer_decay)
    schedule = learning_rate_schedule(optim, total_steps)
    mask = functools.partial(weight_decay_mask, names=tuple(optim.get("no_decay", NO_DECAY_NAMES)))
    if optim.name == "adamw":
        tx = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay,
                         mask=mask)
    elif optim.name == "adam":  # PyTorch's Adam(weight_decay=...): an L2 term added to the gradient, then Adam
        tx = optax.chain(optax.add_decayed_weights(optim.weight_decay, mask=mask),
                         optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
                         optax.scale_by_learning_rate(schedule))
    else:
        raise ValueError(f"config.optim.name={optim.name!r}; valid: adamw, adam")
    if optim.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
    if frozen:
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                   lambda params: frozen_labels(params, tuple(frozen)))
    if optim.layer_decay < 1.0:
        tx = optax.chain(tx, scale_by_layer(optim.layer_decay))
    if optim.ema_decay > 0:
        tx = optax.chain(tx, param_ema(optim.ema_decay))
    return tx


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
