"""A pretrained ResNet put into a model's ``encoder``: read a torchvision/timm checkpoint (``config.model.
encoder_weights``) and copy its variables over the freshly initialised ones. Used by the AD models' frozen encoders
and by the ResNet classifier's trainable backbone."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

from ssm_jax.convert import ConversionError, load_state_dict
from ssm_jax.convert.mambaad import ENCODER_PREFIX, holds_official_encoder
from ssm_jax.convert.resnet import convert_resnet


def _matching(own: dict, loaded: dict, where: str) -> dict:
    """``loaded`` restricted to the keys of ``own`` (extra stages of a full backbone dropped), shapes checked."""
    own_flat, loaded_flat = flatten_dict(own), flatten_dict(loaded)
    missing = ["/".join(k) for k in own_flat if k not in loaded_flat]
    if missing:
        raise ValueError(f"{where} lacks encoder entries {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    wrong = [f"{'/'.join(k)} {tuple(loaded_flat[k].shape)} != {tuple(v.shape)}" for k, v in own_flat.items()
             if tuple(loaded_flat[k].shape) != tuple(v.shape)]
    if wrong:
        raise ValueError(f"{where} has encoder entries of the wrong shape: {wrong[:5]}")
    return unflatten_dict({k: jnp.asarray(loaded_flat[k], v.dtype) for k, v in own_flat.items()})


def read_encoder_weights(arch: str, path: str, last_stage: int = 4) -> dict:
    """Flax variables (params, batch_stats) of stages 1 to ``last_stage`` (those the model's encoder builds) of a
    torchvision/timm ``arch`` checkpoint at ``path``; later stages are ignored and may be absent (a cut backbone).
    An official MambaAD checkpoint serves too: its frozen encoder ``net_t.*`` is the ImageNet ResNet it started from."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.model.encoder_weights={path!r}: no such file; expected a torchvision/timm "
                                f"{arch} state_dict (.pth/.pt, .safetensors or .npz)")
    try:
        state = load_state_dict(path)
        official = holds_official_encoder(state)
        prefix = ENCODER_PREFIX if official else ""
        variables = convert_resnet(state, arch, out_stages=(last_stage,), prefix=prefix)[1]
    except ConversionError as err:
        raise ValueError(f"config.model.encoder_weights={path!r} does not hold the {arch} stages 1-{last_stage} that "
                         f"this encoder needs: {err}") from err
    if jax.process_index() == 0:  # said as init_from says what it copied: which weights the frozen encoder runs with
        values = sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
        print(f"encoder: {arch} stages 1-{last_stage} read from {path}{' (its net_t.*)' if official else ''}, "
              f"{values:,} parameters", flush=True)
    return variables


def with_encoder(variables: dict, encoder: dict, where: str) -> dict:
    """``variables`` with the encoder's params and batch_stats taken from ``encoder`` (converted variables of a
    backbone); a full backbone's extra entries (layer4, fc) are dropped: only the model encoder's own keys are kept."""
    out = {collection: dict(tree) for collection, tree in variables.items()}
    for collection in ("params", "batch_stats"):
        out[collection]["encoder"] = _matching(variables[collection]["encoder"], encoder[collection],
                                               f"{where} ({collection})")
    return out
