"""Defaults shared by every config: the data, optimiser and training sections, and where datasets live.

Every number of a paper's training setup is a field here with the paper's value as default; a config file
changes only what its model or dataset needs. Configs are locked, so a mistyped ``--config.x.y`` is an error.
"""

from __future__ import annotations

import os

import ml_collections
from ml_collections import config_dict

from ssm_jax.data import SOURCES, loader_options
from ssm_jax.training.optim import NO_DECAY_NAMES


def default_data_root(dataset: str) -> str:
    """``$SSM_JAX_DATA/<dataset>`` if SSM_JAX_DATA is set, else ``~/data/<dataset>``."""
    base = os.environ.get("SSM_JAX_DATA") or os.path.join(os.path.expanduser("~"), "data")
    return os.path.join(base, dataset)


def source_options(name: str, given: dict) -> dict:
    """``config.data.source``: every option of dataset ``name``'s loader, so that any can be set on the command line
    (``--config.data.source.sizes="(200, 100)"``); those not ``given`` hold None, typed by ml_collections so that
    the command line may set them, and None leaves the loader's default."""
    options = loader_options(name) if name in SOURCES else []
    return {**{option: config_dict.placeholder(object) for option in options}, **given}


def data_config(name: str, root: str | None, image_size: int, **source_kwargs) -> ml_collections.ConfigDict:
    """``config.data``: which source, where, how images are prepared; ``source`` holds loader-specific options.

    Training augmentations (``ssm_jax.data.augment``): ``flips``; ``rot90``, random multiples of 90 degrees;
    ``affine`` = (max_degrees, max_scale, max_translate), a small random rotation, scale and shift (zeros: off).
    ``class_balance`` in [0, 1] (classification): training draws class c in proportion to n_c ** (1 - class_balance),
    so 1 shows every class equally often and 0 (off) reads each image once an epoch (``data.pipeline.class_balanced``).
    ``center_crop`` c in (0, 1]: every image (and mask) is resized to image_size / c and its centre image_size kept,
    in training, evaluation and prediction alike (1: the whole image; SNARM's released preprocessing: 0.875).
    ``bit_depth`` b (10, 12, 14) reads 16-bit grayscale files as b-bit camera data (values >> (b - 8)), which the
    16-bit range (0: the file type's range) would load at 1/2^(16 - b) of its brightness; 8-bit files are unaffected.
    """
    return ml_collections.ConfigDict({
        "name": name,
        "root": config_dict.placeholder(str) if root is None else root,  # None: the loader's default; overridable
        "image_size": image_size,
        "flips": ("horizontal",),
        "rot90": False,
        "affine": (0.0, 0.0, 0.0),
        "class_balance": 0.0,
        "skip_corrupt": False,
        "num_workers": 0,
        "center_crop": 1.0,
        "bit_depth": 0,
        "source": source_options(name, source_kwargs),
    })


def optim_config(**overrides) -> ml_collections.ConfigDict:
    """``config.optim``: MemoryMamba's setup (AdamW, lr 2e-5, weight decay 0.01, 5% linear warm-up, linear decay).

    ``decay`` is linear | cosine | constant | step; ``end_lr`` (the rate at the last step) is read by linear and
    cosine only, ``step_fraction`` / ``step_factor`` by "step" only (lr x step_factor from step_fraction of the run
    on; MambaAD: x0.1 at 80%). ``ema_decay`` > 0 evaluates the parameters' exponential moving average (debiased;
    ``ssm_jax/training/ema.py``) instead of the last step's.
    ``layer_decay`` < 1 trains each MemoryMamba block at that fraction of the rate of the block above it, the head
    at the full rate (fine-tuning from ``train.init_from``; ``ssm_jax/training/layer_decay.py``); 1.0 is off.
    ``sam_rho`` > 0 (classifiers) takes each step's gradient at the worst point within that distance of the parameters
    (sharpness-aware minimisation, Foret et al. 2021: two forward-backward passes a step); 0 is off.
    ``no_decay``: parameter names exempt from weight decay besides every 1-D tensor (``training.optim``).
    """
    defaults = {"name": "adamw", "lr": 2e-5, "end_lr": 0.0, "weight_decay": 0.01, "b1": 0.9, "b2": 0.999,
                "eps": 1e-8, "warmup_fraction": 0.05, "decay": "linear", "step_fraction": 0.8, "step_factor": 0.1,
                "grad_clip": 0.0, "ema_decay": 0.0, "layer_decay": 1.0, "sam_rho": 0.0, "no_decay": NO_DECAY_NAMES}
    return ml_collections.ConfigDict({**defaults, **overrides})


def train_config(**overrides) -> ml_collections.ConfigDict:
    """``config.train``: epochs, global batch size, logging and checkpoint cadence (in steps).

    ``grad_accum_steps`` = k splits each global batch into k micro-batches computed one after another inside the
    train step, with one optimizer update: the memory of batch / k, the result of batch (see the README). A step
    still consumes ``batch_size`` images, so epochs, step counts and the learning-rate schedule keep their meaning.

    ``init_from`` (classification and pretraining runs): the workdir of another run whose matching parameters start
    this one, e.g. a masked-image pretraining run; top-level parameter names in ``init_exclude`` stay fresh
    (``ssm_jax/training/init_from.py``).

    ``deterministic`` makes XLA's GPU programs run-to-run deterministic (``cli.use_deterministic_ops``): the same
    seed then gives the same numbers on the same GPU, and a resumed run those of an uninterrupted one. It costs speed.

    ``checkpoint_in_thread`` lets a checkpoint's copy to the host run in a worker thread beside the next steps, from
    a copy of the state on the devices (``Checkpointer``'s ``in_thread``): the loop waits for the check and the
    checksums only, for one more copy of the parameters and optimiser moments on the devices during the save.
    """
    defaults = {"epochs": 10, "batch_size": 64, "eval_batch_size": 64, "log_every": 10, "checkpoint_every": 200,
                "max_to_keep": 3, "max_steps": -1, "grad_accum_steps": 1, "init_from": "", "init_exclude": ("head",),
                "deterministic": False, "checkpoint_in_thread": False}
    return ml_collections.ConfigDict({**defaults, **overrides})


def check_variant(config_name: str, variant: str, valid) -> None:
    """Refuse a ``--config=configs/<config_name>.py:<variant>`` that the file does not define, listing ``valid``."""
    if variant not in valid:
        raise ValueError(f"unknown variant {variant!r} of {config_name}; valid: {', '.join(valid)}")


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Lock the config so unknown keys (typos) raise instead of being silently added."""
    config.lock()
    return config
