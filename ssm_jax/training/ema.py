"""Exponential moving average of the parameters (``config.optim.ema_decay``), evaluated instead of the last step's.

Kept as the last transformation of the optimizer, so it lives in the optimizer state: checkpointed, resumed and
replicated with it, and no task's train state changes. Debiased like Adam's moments (the average starts at zero and
is divided by 1 - decay^t), so it is the decay-weighted mean of the parameters after every step taken so far, never
pulled toward the random initialisation, however short the run.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp


class ParamEMAState(NamedTuple):
    ema: optax.Params  # sum over steps s <= t of (1 - decay) decay^(t - s) params_s
    norm: jax.Array  # 1 - decay^t: the weights' sum, so ema / norm is their weighted mean


def check_decay(decay: float) -> None:
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"config.optim.ema_decay={decay}; expected a value in [0, 1) (0: off; e.g. 0.999 averages "
                         f"over about the last 1,000 steps)")


def param_ema(decay: float) -> optax.GradientTransformation:
    """Passes updates through unchanged and tracks the average of ``params + updates`` (the parameters after the
    step); chain it last, after every transformation that changes the updates."""
    check_decay(decay)

    def init(params):
        return ParamEMAState(jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params), jnp.zeros((), jnp.float32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("param_ema needs the parameters: call tx.update(updates, state, params)")
        ema = jax.tree.map(lambda e, p, u: decay * e + (1.0 - decay) * (p + u).astype(jnp.float32), state.ema, params,
                           updates)
        return updates, ParamEMAState(ema, decay * state.norm + (1.0 - decay))

    return optax.GradientTransformation(init, update)


def _is_average(node) -> bool:
    return isinstance(node, ParamEMAState)


def _average(opt_state) -> ParamEMAState | None:
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_average) if _is_average(s)]
    return found[0] if found else None


@jax.jit
def _debiased(ema: ParamEMAState, params):
    averaged = jax.tree.map(lambda e, p: (e / jnp.maximum(ema.norm, 1e-12)).astype(p.dtype), ema.ema, params)
    return jax.tree.map(lambda a, p: jnp.where(ema.norm > 0, a, p), averaged, params)


def eval_params(state):
    """The parameters to evaluate: the debiased average when the optimizer tracks one and has stepped, else
    ``state.params``."""
    ema = _average(state.opt_state)
    return state.params if ema is None else _debiased(ema, state.params)


def evaluation_template(state):
    """``state`` as a template to restore for evaluation: each optimizer-state leaf but the parameter average is
    ``ocp.PLACEHOLDER``, which orbax leaves unread (under Adam, two moments per trained parameter)."""
    return state.replace(opt_state=jax.tree.map(
        lambda s: s if _is_average(s) else jax.tree.map(lambda _: ocp.PLACEHOLDER, s), state.opt_state,
        is_leaf=_is_average))


def evaluation_state(state):
    """What evaluation runs: ``eval_params`` as the parameters and no optimizer state."""
    return state.replace(params=eval_params(state), opt_state=())
