"""An official checkpoint -> a run directory that ``eval.py`` evaluates and ``train.py`` treats as finished.

``convert_to_workdir`` converts the weights with ``from_torch`` and puts them into the ``TrainState`` that
``train.py`` builds for the config (same model, optimizer with the frozen encoder, seed), with fresh optimizer
moments: the official checkpoint's optimizer state is for torch's parameter layout. It is saved with the project's
``Checkpointer`` at the step the config's training ends, with a fresh data-iterator state, so ``train.py`` on the
workdir resumes there, trains no step and evaluates. The training split is listed (never decoded) for that step,
and kept in ``train_set.json``, so the run directory alone predicts new images (``eval.py --predict_dir``,
``ssm_jax.inference.Predictor``) where the dataset is not.

The converted architecture replaces ``config.model``'s fields; ``cli_overrides`` gives the ``--config.a.b=v`` flags
that make ``eval.py`` build the same config from the config file.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import jax

from ssm_jax.convert import CONVERTERS, from_torch
from ssm_jax.data import make_pipeline
from ssm_jax.training.checkpoint import Checkpointer, model_fingerprint
from ssm_jax.training.log import MetricsLog, write_config
from ssm_jax.training.mesh import make_mesh, replicated_sharding
from ssm_jax.training.optim import make_optimizer, training_steps
from ssm_jax.training.run import TASKS, build_model, load_source
from ssm_jax.training.state import TrainState
from ssm_jax.training.train_set import save_train_set

# The kinds that are whole models eval.py can run, and the config.model fields each checkpoint determines.
MODEL_FIELDS = {"mambaad": ("encoder", "decoder_dims", "decoder_depths", "d_state", "ssm_ratio", "directions",
                            "scan_method", "local_kernels")}


def check_kind(kind: str) -> None:
    """Only whole models convert to a run; an encoder (ResNet) is a training input, not a run."""
    if kind in MODEL_FIELDS:
        return
    if kind in CONVERTERS:
        raise ValueError(f"{kind} is an encoder, not a model to evaluate: train with it as "
                         f"--config.model.encoder_weights=CHECKPOINT instead")
    raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(MODEL_FIELDS)}")


def check_no_checkpoints(workdir) -> None:
    """Refuse a workdir that already holds checkpoints: the conversion never overwrites a run."""
    directory = Path(workdir) / "checkpoints"
    if directory.is_dir() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} is not empty; refusing to overwrite it: use a new WORKDIR")


def with_model(config, kind: str, model_config):
    """A copy of ``config`` whose model fields are the converted ones; ``config`` must build a ``kind`` model."""
    if config.model.name != kind:
        raise ValueError(f"the config builds model {config.model.name!r}; a {kind} checkpoint needs a {kind} "
                         f"config (configs/{kind}_*.py)")
    config = config.copy_and_resolve_references()
    config.model.update({field: model_config[field] for field in MODEL_FIELDS[kind]})
    return config


def training_split(config):
    """The config's training split, listed (no image read). The run directory is made of it (the step its training
    ends at, ``train_set.json``), so a dataset that is not there is named with why it is needed and what scores
    images without it."""
    try:
        return load_source(config, "train")
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err}; converting needs the training split listed (no image is read): the run's checkpoint is saved at "
            f"the step its training ends (train.epochs x training images / train.batch_size) and its train_set.json "
            f"records the split. Without the dataset, ssm_jax.convert.from_torch and "
            f"ssm_jax.models.{config.model.name}.anomaly_maps score images with the checkpoint (README)") from err


def training_end(config, source) -> tuple[int, dict]:
    """(the step ``train.py`` stops at, a fresh data-iterator state of the format its resume restores), as
    ``Experiment`` computes them from the training split ``source`` and its pipeline."""
    steps = training_steps(config.train, len(source))
    data = config.data
    batches = iter(make_pipeline(source, batch_size=config.train.batch_size, image_size=data.image_size, train=True,
                                 seed=config.seed, flips=tuple(data.flips), num_workers=data.num_workers,
                                 skip_corrupt=data.skip_corrupt, class_balance=data.class_balance))
    state = batches.get_state()
    batches.close()
    return steps, state


def convert_to_workdir(kind: str, checkpoint, workdir, config):
    """Convert ``checkpoint`` and save it as a finished run of ``config`` (model fields replaced) under
    ``workdir``: ``checkpoints/<step>``, ``config.json``, ``train_set.json`` and an empty ``metrics.jsonl``. Returns
    (the config written, the step)."""
    check_kind(kind)
    workdir = Path(workdir).expanduser()
    check_no_checkpoints(workdir)
    model_config, variables = from_torch(kind, checkpoint)
    config = with_model(config, kind, model_config)
    source = training_split(config)
    steps, data_state = training_end(config, source)
    tx = make_optimizer(config.optim, steps, frozen=TASKS[config.task].frozen)
    _, run_rng = jax.random.split(jax.random.PRNGKey(config.seed))  # as create_state splits it
    variables = dict(variables)
    params, model = variables.pop("params"), build_model(config)

    def create(params, model_state, rng):  # jitted: one compile instead of one per optimizer-state leaf
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx, model_state=model_state,
                                 rng=rng).replace(step=steps)

    state = jax.jit(create, out_shardings=replicated_sharding(make_mesh()))(params, variables, run_rng)
    checkpointer = Checkpointer(workdir, model_fingerprint(config.model.name, state.params), config.train.max_to_keep)
    checkpointer.save(steps, state, {"data": data_state})
    checkpointer.close()
    write_config(workdir, config)
    save_train_set(workdir, source)
    MetricsLog(workdir).path.touch()  # no step was trained here; train.py plots the log it finds
    return config, steps


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _cli_value(value) -> str:
    """A value as ml-collections parses it from the command line, shell-quoted (tuples as ``'(3, 5)'``)."""
    return shlex.quote(str(tuple(value)) if isinstance(value, (tuple, list)) else str(value))


def cli_overrides(config, defaults) -> list[str]:
    """The ``--config.a.b=v`` flags that turn ``defaults`` (the config file's config) into ``config``."""
    base = _flatten(defaults.to_dict())
    return [f"--config.{key}={_cli_value(value)}" for key, value in _flatten(config.to_dict()).items()
            if key not in base or base[key] != value]
