"""Entry points behind train.py and eval.py: build everything a config names, train with resume, evaluate."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import os
import sys
import unicodedata
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable

import jax
import ml_collections
import numpy as np

from ssm_jax import viz
from ssm_jax.data import SOURCES, get_source, loader_options, make_pipeline
from ssm_jax.data.pipeline import first_example
from ssm_jax.data.common import Record, Source, images_below
from ssm_jax.data.images import IMAGE_EXTENSIONS, CorruptImageError, image_size
from ssm_jax.models.mambaad import build_mambaad
from ssm_jax.models.memorymamba import build_memorymamba
from ssm_jax.models.resnet_classifier import build_resnet_classifier
from ssm_jax.models.snarm import build_snarm
from ssm_jax.training import classification, pretraining, reconstruction, residual
from ssm_jax.training import tta as tta_lib
from ssm_jax.training.accumulate import check_grad_accum
from ssm_jax.training.checkpoint import Checkpointer, has_checkpoint, model_fingerprint
from ssm_jax.training.config_ranges import check_ranges
from ssm_jax.training.ema import evaluation_state, evaluation_template
from ssm_jax.training.log import MetricsLog, read_config, write_config
from ssm_jax.training.loop import train_loop
from ssm_jax.training.mesh import check_batch_size, make_mesh
from ssm_jax.training.optim import count_params, make_optimizer, training_steps
from ssm_jax.training.state import abstract_state
from ssm_jax.training.train_set import TrainSet, read_train_set, save_train_set
from ssm_jax.training.workdir_lock import workdir_lock

MODELS = {"memorymamba": build_memorymamba, "resnet": build_resnet_classifier, "mambaad": build_mambaad,
          "snarm": build_snarm}


def _no_kwargs(config) -> dict:
    return {}


def _no_check(config, train_source) -> None:
    pass


def _no_step_kwargs(config, train_source) -> dict:
    return {}


def _no_state_kwargs(config, train_source, resuming: bool) -> dict:
    return {}


def _init_kwargs(config, resuming: bool) -> dict:
    """``create_state``'s start from another run (``config.train.init_from``), on a fresh start only."""
    return {"init_from": "" if resuming else config.train.init_from, "init_exclude": tuple(config.train.init_exclude)}


def _classifier_kwargs(config, train_source, resuming: bool) -> dict:
    """``_init_kwargs`` plus the ResNet classifier's pretrained backbone (``config.model.encoder_weights``), on a
    fresh start only: a resumed run restores its own."""
    weights = config.model.get("encoder_weights", "")
    return {**_init_kwargs(config, resuming), "encoder_weights": "" if resuming else weights}


def _check_classes(config, train_source) -> None:
    """The classifier's class count and its binary report's first positive class against the dataset's classes,
    and its evaluation's test-time augmentation, so that a typo is named before training rather than after."""
    tta_lib.check_mode(config.eval.tta)
    names = list(train_source.class_names)
    if config.model.num_classes != len(names):
        raise ValueError(f"config.model.num_classes={config.model.num_classes} but dataset {config.data.name!r} "
                         f"has {len(names)} classes {names}")
    if not 0 <= config.eval.binary_from < len(names):
        raise ValueError(f"config.eval.binary_from={config.eval.binary_from} must be 0 (off) or the index of the first "
                         f"positive class, 1..{len(names) - 1}, of {names}")
    threshold = config.eval.flag_threshold  # >= 0: config_ranges
    if threshold > 1.0 or (threshold and not config.eval.binary_from):
        raise ValueError(f"config.eval.flag_threshold={threshold} must be 0 (off) or a probability in (0, 1] with "
                         f"config.eval.binary_from naming the group it flags (now {config.eval.binary_from})")
    if isinstance(train_source, Source):  # a run built to predict reads no split
        unseen = [names[c] for c in np.flatnonzero(np.bincount(train_source.labels, minlength=len(names)) == 0)]
        if unseen:
            warnings.warn(f"classes {unseen} have no training image (the split put all of theirs in the test set): "
                          f"the model cannot learn them; add images of them", stacklevel=2)


def _anomaly_output_kwargs(config) -> dict:
    """The anomaly detectors' evaluation outputs: overlays per category and the image score that flags an image."""
    return {"num_overlays": config.eval.num_overlays, "flag_threshold": config.eval.flag_threshold}


@dataclasses.dataclass(frozen=True)
class Family:
    """A task family as the Experiment sees it: a module with the same seven functions (create_state,
    make_train_step, make_predict_step, predict_dataset, write_evaluation, write_folder_predictions,
    format_report), looked up at call time, plus what differs: its models, frozen parameters, extra arguments
    taken from the config (``state_kwargs`` also from the training split, a ``Source`` or, predicting, its
    ``TrainSet``, and from whether a checkpoint will be restored over the new state; make_train_step's
    ``step_kwargs`` also from the training set, e.g. class weights), and a check of the config against the
    training set. ``data_task`` is the task of the datasets it trains on, when that is not its own name (SNARM's
    "residual" family reads "anomaly" datasets; "any": every dataset, labels unread, as masked-image pretraining)."""

    module: ModuleType
    models: tuple[str, ...]
    outputs: str  # the files an evaluation may write; its last line names those it wrote
    frozen: tuple[str, ...] = ()
    check: Callable[[ml_collections.ConfigDict, Source | TrainSet], None] = _no_check
    state_kwargs: Callable[[ml_collections.ConfigDict, Source | TrainSet, bool], dict] = _no_state_kwargs
    predict_kwargs: Callable[[ml_collections.ConfigDict], dict] = _no_kwargs
    step_kwargs: Callable[[ml_collections.ConfigDict, Source], dict] = _no_step_kwargs
    output_kwargs: Callable[[ml_collections.ConfigDict], dict] = _no_kwargs
    summary_kwargs: Callable[[ml_collections.ConfigDict], dict] = _no_kwargs  # write_evaluation's alone
    eval_dir: Callable[[ml_collections.ConfigDict], str] = lambda config: "eval"
    on_fresh_start: Callable[[ml_collections.ConfigDict], None] = lambda config: None
    data_task: str = ""
    init_from: bool = False  # whether create_state takes config.train.init_from
    sam: bool = False  # whether make_train_step takes config.optim.sam_rho (through step_kwargs)
    folder_picture_as_stored: bool = False  # whether predict_<folder>.png draws the files as stored, not as resized


TASKS = {
    "classification": Family(classification, ("memorymamba", "resnet"),
                             "metrics.json, confusion.png, mistakes.png, predictions.csv, binary_roc_pr.png",
                             check=_check_classes, step_kwargs=classification.step_kwargs,
                             state_kwargs=_classifier_kwargs, init_from=True, sam=True,
                             predict_kwargs=classification.predict_kwargs,
                             output_kwargs=lambda config: {"binary_from": config.eval.binary_from,
                                                           "flag_threshold": config.eval.flag_threshold},
                             summary_kwargs=lambda config: {"tta": config.eval.tta},
                             eval_dir=classification.eval_dir_name, folder_picture_as_stored=True),
    "anomaly": Family(reconstruction, ("mambaad",), "metrics.json, metrics.md, scores.csv, roc_pr.png, overlays/",
                      frozen=reconstruction.FROZEN,
                      state_kwargs=lambda config, train_source, resuming: {  # a checkpoint holds the encoder
                          "encoder_weights": "" if resuming else config.model.encoder_weights},
                      predict_kwargs=lambda config: {"sigma": config.eval.sigma},
                      output_kwargs=_anomaly_output_kwargs, on_fresh_start=reconstruction.warn_if_random_encoder),
    "residual": Family(residual, ("snarm",), "metrics.json, metrics.md, scores.csv, roc_pr.png, overlays/",
                       frozen=residual.FROZEN, data_task="anomaly",
                       state_kwargs=residual.state_kwargs,
                       predict_kwargs=lambda config: {"sigma": config.eval.sigma, "score_pool": config.eval.score_pool,
                                                      "score_stride": config.eval.score_stride},
                       output_kwargs=_anomaly_output_kwargs, on_fresh_start=residual.warn_if_random_encoder),
    "pretraining": Family(pretraining, ("memorymamba",), "metrics.json, reconstructions.png", data_task="any",
                          state_kwargs=lambda config, train_source, resuming: {
                              "mask_patch": config.loss.mask_patch, **_init_kwargs(config, resuming)},
                          predict_kwargs=lambda config: {"loss_config": config.loss}, init_from=True),
}


def _count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless one: "1 step", "3 steps"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def _empty_test_split(config) -> str:
    """What to say of a test split without images (a ``test_fraction`` of 0, or a dataset too small to split)."""
    given = {key: value for key, value in (config.data.get("source") or {}).items() if value is not None}
    return (f"the test split of {config.data.name!r} at {config.data.root or 'its default root'} holds no images "
            f"(config.data.source: {given}): a split by fraction tests round(images x test_fraction) of them, none "
            f"with a fraction of 0 or with too few images")


def load_source(config, split: str) -> Source:
    """The ``split`` of ``config.data``; unknown ``config.data.source`` options are named with the valid ones, and
    empty ones (None) leave the loader's defaults."""
    data = config.data
    if data.name not in SOURCES:
        raise ValueError(f"config.data.name={data.name!r}; valid: {', '.join(sorted(SOURCES))}")
    options = {key: value for key, value in data.source.items() if value is not None}
    valid = loader_options(data.name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"config.data.source has unknown keys {unknown} for dataset {data.name!r}; valid: {valid}")
    root = os.path.expanduser(data.root) if data.root else None
    crop = data.get("center_crop", 1.0)
    if not 0 < crop <= 1:
        raise ValueError(f"config.data.center_crop={crop} must lie in (0, 1]: the share of each side kept (1: all)")
    try:
        source = get_source(data.name, root, split, **options)
    except FileNotFoundError as err:
        if root is not None and os.path.isdir(root):  # the root is there: the error names what is missing in it
            raise
        raise FileNotFoundError(f"{err}. (config.data.root={root!r}: pass --config.data.root=DIR, or set "
                                f"$SSM_JAX_DATA to the folder holding the dataset's folder)") from err
    _refuse_undecodable([*source.class_names, *(r.path for r in source.records)], f"config.data.root={root!r}")
    return dataclasses.replace(source, center_crop=crop, bit_depth=data.get("bit_depth", 0))


def build_model(config):
    """The model named by ``config.model.name`` (its other fields are the model's own)."""
    if config.model.name not in MODELS:
        raise ValueError(f"config.model.name={config.model.name!r}; valid: {', '.join(MODELS)}")
    return MODELS[config.model.name](config.model)


def _family(config) -> Family:
    """The task family that ``config.task`` names."""
    if config.task not in TASKS:
        raise ValueError(f"config.task={config.task!r}; valid: {', '.join(TASKS)}")
    return TASKS[config.task]


def _trained_as(workdir: Path) -> tuple[str, str] | None:
    """The task and model name of the run in ``workdir`` (its ``config.json``), or None where it has none (a run
    from before it was written, another tool's checkpoint) or one that names neither."""
    try:
        trained = read_config(workdir)
        return trained.task, trained.model.name
    except (FileNotFoundError, ValueError, AttributeError):
        return None


def _check_same_run(config, workdir: Path) -> None:
    """Refuses a config of another task or model than the run in ``workdir`` trained (its ``config.json``, else the
    dataset task of its ``train_set.json``; a run with neither passes). Checked before anything else reads the run's
    records: their checks (class names, bit depth) and notes (optimizer settings) would name a symptom of the wrong
    config, or the wrong workdir, and not the cause."""
    data_task, trained = _family(config).data_task or config.task, _trained_as(workdir)
    advice = "pass the config that run was trained with"
    if trained is not None and trained != (config.task, config.model.name):
        raise ValueError(f"{workdir} holds a {trained[0]} run of model {trained[1]!r} (its config.json); this config "
                         f"trains {config.model.name!r} for {config.task}: {advice} (--config=configs/from_run.py:"
                         f"{workdir} reads its config.json), or another --workdir")
    saved = read_train_set(workdir) if trained is None else None
    if saved is not None and data_task not in ("any", saved.task):
        raise ValueError(f"{workdir} holds a run on a {saved.task} dataset (its train_set.json); this config trains "
                         f"{config.model.name!r} for {config.task}, on {data_task} datasets: {advice}, or another "
                         f"--workdir")


def _check_task(config, family: Family, train_source: Source) -> None:
    """The model and the dataset must suit ``config.task``, and the family's own check must pass."""
    if config.model.name not in family.models:
        raise ValueError(f"config.model.name={config.model.name!r} does not fit config.task={config.task!r}; "
                         f"valid: {', '.join(family.models)}")
    if family.data_task != "any" and train_source.task != (family.data_task or config.task):
        raise ValueError(f"config.task={config.task!r} trains on {family.data_task or config.task} datasets but "
                         f"{config.data.name!r} is a {train_source.task} dataset")
    family.check(config, train_source)


def _with_saved_optimizer(config, workdir: Path):
    """``config`` with the ``optim`` fields of the run's ``config.json`` where both have them. Evaluating, the
    optimizer only shapes the saved state to restore (and with ``ema_decay`` says which parameters to evaluate), so
    it must be the one the run trained with, even if the config file's defaults changed since (a clipping setting
    added, say); a difference is said."""
    path = workdir / "config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8")).get("optim") or {}
    except (OSError, ValueError, AttributeError):  # no config.json (another tool's checkpoint): the config as given
        return config
    config, changed = config.copy_and_resolve_references(), []
    for key, value in saved.items():
        current = config.optim.get(key)
        value = tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value
        if key in config.optim and value != current:
            try:
                config.optim[key] = value
            except TypeError:
                continue
            changed.append(f"{key}={value!r} (the config says {current!r})")
    if changed:
        _say(f"evaluating with the optimizer settings the run trained with, from {path}: {', '.join(changed)}")
    return config


def _trained_data_root(config, workdir: Path) -> str | None:
    """The ``data.root`` that the run in ``workdir`` trained with (its ``config.json``), when ``config`` reads
    another: where to look when an evaluation's data folder is missing (a config file's default root, say, where the
    run was given ``--config.data.root``)."""
    try:
        trained = read_config(workdir).data.get("root")
    except (FileNotFoundError, ValueError, AttributeError):  # no config.json (another tool's checkpoint), or no data
        return None
    return trained if trained and trained != config.data.get("root") else None


def _check_bit_depth(config, saved: TrainSet | None, workdir: Path) -> None:
    """Refuses a ``data.bit_depth`` other than the one ``workdir``'s run trained with (``saved``, its
    ``train_set.json``; a run without one predates the field and read at 0): the model knows its images at one."""
    trained, bit_depth = 0 if saved is None else saved.bit_depth, config.data.get("bit_depth", 0)
    if bit_depth != trained:
        raise ValueError(f"config.data.bit_depth={bit_depth} but the run in {workdir} trained on images read with "
                         f"bit_depth {trained} (its train_set.json); its images are read as in training: pass "
                         f"--config.data.bit_depth={trained}, or --config=configs/from_run.py:{workdir} (the run's "
                         f"own config)")


def _check_class_names(source, saved: TrainSet | None, workdir: Path) -> None:
    """Refuses a dataset whose classes are not those ``workdir``'s run trained with, in their order (``saved``, its
    ``train_set.json``): outputs are read by position, so a class folder added, renamed or removed would relabel
    them all. Names compare in Unicode NFC form: a copy made on macOS stores them decomposed (NFD)."""
    if saved is None or saved is source:
        return
    ours, theirs = ([unicodedata.normalize("NFC", n) for n in names] for names in (source.class_names,
                                                                                   saved.class_names))
    if ours != theirs:
        hint = (" (the same names in another order: folder names stored decomposed, as a copy made on macOS stores "
                "them, sort otherwise; rename the folders)" if sorted(ours) == sorted(theirs) else "")
        raise ValueError(f"the dataset's classes {list(source.class_names)} are not the classes the run in {workdir} "
                         f"trained with, in their order: {list(saved.class_names)} (its train_set.json){hint}; the "
                         f"model's outputs are read by position, so its predictions would be scored against the "
                         f"wrong classes: give the dataset the run's class folders")


def _refuse_undecodable(names, what: str) -> None:
    """File names the locale cannot decode (Python's file-system encoding ASCII, as under ``LC_ALL=C`` with
    ``PYTHONUTF8=0``) are refused before anything is written: they cannot be written to a UTF-8 file or drawn, and
    orbax cannot open a checkpoint under them."""
    for name in names:
        if not name.isascii():
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{what}: {name!r} holds bytes this locale cannot decode (Python's file-system "
                                 f"encoding is {sys.getfilesystemencoding()}); run with a UTF-8 locale: export "
                                 f"LANG=C.UTF-8, or PYTHONUTF8=1") from None


def _no_checkpoint(workdir: Path) -> str:
    return (f"no checkpoint in {workdir.absolute() / 'checkpoints'}; train first with "
            f"`python train.py --config=... --workdir={workdir}`")


class Experiment:
    """Everything built from a config for one workdir: sources, mesh, model, state, checkpoints. With ``training``
    False (``for_eval``) the training batch need not split over the devices: evaluation never feeds one; with
    ``train_set`` (a ``TrainSet``) the training split is not read."""

    def __init__(self, config, workdir, training: bool = True, train_set: TrainSet | None = None):
        self.family = _family(config)
        self.config, self.workdir = config, Path(workdir).expanduser()  # "--workdir=~/x": the shell leaves ~ as is
        _refuse_undecodable([str(self.workdir)], "--workdir")
        check_ranges(config)
        # Whether a checkpoint will be restored over the new state: then the state only needs the right shapes, and
        # the run's images are read as it trained on them.
        resuming = has_checkpoint(self.workdir)
        if resuming:
            _check_same_run(config, self.workdir)
        saved = (train_set if train_set is not None else read_train_set(self.workdir)) if resuming else None
        self._saved_train_set = saved
        if resuming:
            _check_bit_depth(config, saved, self.workdir)
        self.mesh = make_mesh()
        if training:  # evaluation never splits a training batch over the devices
            check_batch_size(config.train.batch_size, self.mesh)
            check_grad_accum(config.train.batch_size, config.train.grad_accum_steps, self.mesh)
        check_batch_size(config.train.eval_batch_size, self.mesh, "train.eval_batch_size")
        if config.train.init_from and not self.family.init_from:
            takers = " and ".join(name for name, family in TASKS.items() if family.init_from)
            raise ValueError(f"config.train.init_from is a setting of {takers} runs, not of "
                             f"config.task={config.task!r}")
        if config.optim.sam_rho and not self.family.sam:
            takers = " and ".join(name for name, family in TASKS.items() if family.sam)
            raise ValueError(f"config.optim.sam_rho is a setting of {takers} runs, not of config.task={config.task!r}")
        self.train_source = train_set if train_set is not None else load_source(config, "train")
        _check_class_names(self.train_source, saved, self.workdir)
        # read before training, so a mistake in the test split's layout is named now, not after the last step
        self.test_source = load_source(config, "test") if training else None
        if training and not config.data.skip_corrupt:
            self.test_source.check_mask_sizes()
        if training and len(self.test_source) == 0:
            _say(f"note: {_empty_test_split(config)}: this run trains and saves its checkpoints, and skips the "
                 f"evaluation")
        _check_task(config, self.family, self.train_source)
        # evaluating, the schedule only shapes the state to restore: a training set under one train.batch_size (a
        # config file's default where the run was given a smaller batch) is no reason to refuse
        self.total_steps = training_steps(config.train, len(self.train_source)) if training else 1
        self.model = build_model(config)
        tx = make_optimizer(config.optim, self.total_steps, frozen=self.family.frozen)
        # restoring, the state takes the shapes of the split the run trained on (SNARM's bank): images added since
        # are read as new data (a resumed run warns that its data changed), not as a damaged checkpoint
        shaping = self.train_source if saved is None else saved
        create = functools.partial(self.family.module.create_state, self.model, tx, jax.random.PRNGKey(config.seed),
                                   config.data.image_size, self.mesh,
                                   **self.family.state_kwargs(config, shaping, resuming))
        self.state = abstract_state(create, self.mesh) if resuming else create()  # resuming: the restore fills it
        self.checkpointer = Checkpointer(self.workdir, model_fingerprint(config.model.name, self.state.params),
                                         config.train.max_to_keep, config.train.get("checkpoint_in_thread", False))

    def pipeline(self, source, train: bool):
        data, per_process = self.config.data, jax.process_count()
        batch = (self.config.train.batch_size if train else self.config.train.eval_batch_size) // per_process
        return make_pipeline(source, batch_size=batch, image_size=data.image_size, train=train, seed=self.config.seed,
                             flips=tuple(data.flips) if train else (), rot90=train and data.rot90,
                             affine=tuple(data.affine) if train else (0.0, 0.0, 0.0), num_workers=data.num_workers,
                             skip_corrupt=data.skip_corrupt, class_balance=data.class_balance if train else 0.0)

    def train(self):
        """Train to ``total_steps``, resuming from the workdir's latest checkpoint when there is one."""
        config = self.config
        log = MetricsLog(self.workdir)
        # closing: stops the data workers and frees the shared-memory batches they made ahead, on every way out
        # (finished, SIGTERM, error); otherwise they outlive training and Python warns of leaked shared memory.
        with contextlib.closing(iter(self.pipeline(self.train_source, train=True))) as batches:
            restored = self.checkpointer.restore(self.state)
            if restored is not None:
                self.state, extra = restored
                batches.set_state(extra["data"])
                log.trim_after(extra["step"])
                _say(f"resuming from step {extra['step']} of {self.total_steps} ({self.checkpointer.directory})")
            else:
                log.start_over()  # lines of a run here that died before its first checkpoint
                self.family.on_fresh_start(config)
            write_config(self.workdir, config)  # after the restore: a refused resume keeps the config that wrote it
            if jax.process_index() == 0 and self._saved_train_set is None:  # resumed, the record of the split that
                save_train_set(self.workdir, self.train_source)  # shaped the state stays: eval.py shapes it alike
            frozen = count_params({k: v for k, v in self.state.params.items() if k in self.family.frozen})
            _say(f"{config.model.name}: {count_params(self.state.params):,} parameters"
                 f"{f' ({frozen:,} frozen)' if frozen else ''}; {len(self.train_source)} training images; "
                 f"{_count(self.total_steps, 'step')} of batch {config.train.batch_size} on "
                 f"{_count(self.mesh.devices.size, jax.devices()[0].platform + ' device')}, "
                 f"{_count(config.train.grad_accum_steps, 'micro-batch')} per step")
            train_step = self.family.module.make_train_step(config.loss, self.mesh, config.train.grad_accum_steps,
                                                            **self.family.step_kwargs(config, self.train_source))
            self.state = train_loop(
                self.state, train_step, batches, mesh=self.mesh,
                total_steps=self.total_steps, checkpointer=self.checkpointer, log=log,
                log_every=config.train.log_every, checkpoint_every=config.train.checkpoint_every,
                images_per_step=config.train.batch_size)
        if jax.process_index() == 0:
            viz.save_training_curves(log.path, self.workdir / "training_curves.png")

    def _predict(self, source) -> dict:
        module = self.family.module
        data = self.config.data
        example = functools.partial(first_example, source, data.image_size, data.skip_corrupt)  # called if needed
        with contextlib.closing(iter(self.pipeline(source, train=False))) as batches:
            return module.predict_dataset(
                self.state, module.make_predict_step(self.mesh, **self.family.predict_kwargs(self.config)),
                batches, num_examples=len(source),
                local_batch=self.config.train.eval_batch_size // jax.process_count(), mesh=self.mesh, example=example)

    @classmethod
    def for_eval(cls, config, workdir, predict_only: bool = False) -> Experiment:
        """The experiment with ``workdir``'s latest checkpoint restored. A workdir without one is refused before
        anything is built or written: no empty ``checkpoints/`` left behind, no SNARM patch bank built first; so is a
        config of another task or model than the run's (``_check_same_run``), before its records are read. The
        optimizer settings are the training run's (``_with_saved_optimizer``). With ``predict_only`` (new images,
        ``predict_folder``) the training split is taken from the run's ``train_set.json`` where it has one, so the
        dataset need not be there; a run without one reads the dataset and, once restored, writes it. A data folder
        that is not there is named with the root the run trained with, where that is another."""
        workdir = Path(workdir).expanduser()
        if not has_checkpoint(workdir):
            raise FileNotFoundError(_no_checkpoint(workdir))
        _check_same_run(config, workdir)
        saved = read_train_set(workdir)
        try:
            experiment = cls(_with_saved_optimizer(config, workdir), workdir, training=False,
                             train_set=saved if predict_only else None)
        except FileNotFoundError as err:
            trained = _trained_data_root(config, workdir)
            if trained is None:
                raise
            raise FileNotFoundError(f"{err}; the run in {workdir} trained with --config.data.root={trained}: pass it, "
                                    f"or --config=configs/from_run.py:{workdir} (the run's own config)") from err
        try:
            experiment.restore_for_eval()
        except Exception:
            experiment.checkpointer.close()  # a long-lived caller (a Predictor's program) keeps no manager threads
            raise
        if saved is None and jax.process_index() == 0:
            save_train_set(workdir, experiment.train_source)
        return experiment

    def restore_for_eval(self):
        """The latest checkpoint's ``evaluation_state``, its optimizer moments left unread."""
        restored = self.checkpointer.restore(evaluation_template(self.state))
        if restored is None:
            raise FileNotFoundError(_no_checkpoint(self.workdir))
        self.state = evaluation_state(restored[0])

    def evaluate(self) -> dict:
        """Test-split metrics and pictures under ``<workdir>/eval``; prints the per-class / per-category report."""
        source = self.test_source if self.test_source is not None else load_source(self.config, "test")
        if len(source) == 0:
            raise ValueError(f"{_empty_test_split(self.config)}: nothing to evaluate")
        predictions = self._predict(source)
        summary = {}
        if jax.process_index() == 0:
            module, out_dir = self.family.module, self.eval_dir
            summary = module.write_evaluation(predictions, source, out_dir, **self.family.output_kwargs(self.config),
                                              **self.family.summary_kwargs(self.config))
            _say(module.format_report(summary))
            written = [name for name in self.family.outputs.split(", ") if (out_dir / name).exists()]
            _say(f"wrote {out_dir} ({', '.join(written)})")
        return summary

    @property
    def eval_dir(self) -> Path:
        """``<workdir>/eval`` (``eval_tta_<mode>`` for a classifier evaluated with test-time augmentation)."""
        return self.workdir / self.family.eval_dir(self.config)

    def predict_folder(self, folder) -> Path:
        """Predictions for every image in ``folder`` (recursively) -> ``<eval_dir>/predict_<name>.csv``: class
        probabilities (classification) or anomaly scores (anomaly detection), and ``predict_<name>.png``, the
        images most worth a look (the likeliest defects or least sure classes; the top-scoring overlays)."""
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"--predict_dir {folder} is not a directory of images")
        paths = images_below(str(folder))
        if not paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
        _refuse_undecodable(paths, f"--predict_dir {folder}")
        _warn_if_not_square(paths, self.config.data.image_size, self.family.folder_picture_as_stored)
        source = Source([Record(p, 0) for p in paths], self.train_source.class_names, task=self.train_source.task,
                        center_crop=self.train_source.center_crop, bit_depth=self.train_source.bit_depth)
        predictions = self._predict(source)
        out = None
        if jax.process_index() == 0:
            out = self.family.module.write_folder_predictions(predictions, source, self.eval_dir,
                                                              _prediction_name(self.eval_dir, folder),
                                                              **self.family.output_kwargs(self.config))
            skipped = len(source) - len(predictions["indices"])  # data.skip_corrupt left them out
            picture = out.with_suffix(".png")
            _say(f"predicted {len(predictions['indices'])} of {len(source)} images -> {out}"
                 + (f" ({skipped} unreadable, skipped: empty rows)" if skipped else "")
                 + (f", {picture.name}" if picture.exists() else ""))
        return out


def _prediction_name(eval_dir: Path, folder: Path) -> str:
    """``<name>`` of ``predict_<name>.csv`` for ``folder``: its own name ("." names its folder too), or ``<name>-2``,
    ``-3``... where another folder of that name (line_1/2026-12-07 beside line_2/2026-12-07) holds it, so neither's
    results are overwritten; the same folder again keeps its name. Who holds which: ``predict_folders.json``."""
    index_path, where = eval_dir / "predict_folders.json", str(folder.resolve())
    try:
        index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.exists() else {}
    except ValueError:
        index = None
    if not isinstance(index, dict):
        raise ValueError(f"{index_path} is unreadable; expected the JSON object {{folder: name}} that eval.py "
                         f"--predict_dir writes: delete it to start a new one")
    name = index.get(where)
    if name is None:  # a CSV from before the index was kept is held by an unknown folder: not overwritten either
        base, held = Path(where).name or "root", set(index.values())
        candidates = itertools.chain([base], (f"{base}-{n}" for n in itertools.count(2)))
        name = next(c for c in candidates if c not in held and not (eval_dir / f"predict_{c}.csv").exists())
        if name != base:
            owner = next((f for f, n in index.items() if n == base), "a folder predicted before predict_folders.json")
            _say(f"{folder} is predicted as predict_{name}.csv: predict_{base}.csv holds {owner}")
        eval_dir.mkdir(parents=True, exist_ok=True)
        index_path.write_text(json.dumps({**index, where: name}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return name


def _warn_if_not_square(paths, size: int, picture_as_stored: bool) -> None:
    """Says how many images are not square: each is resized to ``size`` x ``size`` as the training images were,
    squashing it, and so drawn in ``predict_<folder>.png`` unless it draws the files ``picture_as_stored`` (a
    classifier's). Read from the headers only; an unreadable file is left to the prediction, which names it."""
    oblong = []
    for path in paths:
        try:
            w, h = image_size(path)
        except (CorruptImageError, ValueError):
            continue
        if w != h:
            oblong.append((path, w, h))
    if oblong and jax.process_index() == 0:
        path, w, h = oblong[0]
        _say(f"warning: {len(oblong)} of {len(paths)} images are not square (e.g. {path}, {w}x{h}); each is "
             f"resized to {size}x{size} as the training images were, changing its proportions"
             + ("; predict_<folder>.png shows the files as stored" if picture_as_stored else ", and so shown"))


def train_and_evaluate(config, workdir) -> dict:
    """What ``train.py`` runs: train (resuming if possible), then evaluate on the test split; one run per workdir."""
    with workdir_lock(workdir):
        experiment = Experiment(config, workdir)
        experiment.train()
        return experiment.evaluate() if len(experiment.test_source) else {}
