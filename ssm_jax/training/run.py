"""Entry points behind train.py and eval.py: build everything a config names, train with resume, evaluate."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np

from ssm_jax import viz
from ssm_jax.data import SOURCES, get_source, make_pipeline
from ssm_jax.data.common import Record, Source
from ssm_jax.data.images import IMAGE_EXTENSIONS
from ssm_jax.models.memorymamba import build_memorymamba
from ssm_jax.training import classification
from ssm_jax.training.checkpoint import Checkpointer, model_fingerprint
from ssm_jax.training.log import MetricsLog, write_config
from ssm_jax.training.loop import train_loop
from ssm_jax.training.mesh import check_batch_size, make_mesh
from ssm_jax.training.optim import count_params, make_optimizer

TASKS = ("classification",)


def _say(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def load_source(config, split: str) -> Source:
    """The ``split`` of ``config.data``; unknown ``config.data.source`` options are named with the valid ones."""
    data = config.data
    if data.name not in SOURCES:
        raise ValueError(f"config.data.name={data.name!r}; valid: {', '.join(sorted(SOURCES))}")
    options = dict(data.source)
    valid = [p for p in inspect.signature(SOURCES[data.name]).parameters if p not in ("root", "split")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"config.data.source has unknown keys {unknown} for dataset {data.name!r}; valid: {valid}")
    root = os.path.expanduser(data.root) if data.root else None
    try:
        return get_source(data.name, root, split, **options)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}. (config.data.root={root!r}: pass --config.data.root=DIR or set "
                                f"$SSM_JAX_DATA to the folder holding '{data.name}')") from err


def build_model(config):
    """The model named by ``config.model.name`` (its other fields are the model's own)."""
    fields = {k: v for k, v in config.model.items() if k != "name"}
    if config.model.name == "memorymamba":
        return build_memorymamba(ml_collections.ConfigDict(fields))
    raise ValueError(f"config.model.name={config.model.name!r}; valid: memorymamba")


class Experiment:
    """Everything built from a config for one workdir: sources, mesh, model, state, checkpoints."""

    def __init__(self, config, workdir):
        if config.task not in TASKS:
            raise ValueError(f"config.task={config.task!r}; valid: {', '.join(TASKS)}")
        self.config, self.workdir = config, Path(workdir)
        self.mesh = make_mesh()
        check_batch_size(config.train.batch_size, self.mesh)
        check_batch_size(config.train.eval_batch_size, self.mesh, "train.eval_batch_size")
        self.train_source = load_source(config, "train")
        if config.model.num_classes != len(self.train_source.class_names):
            raise ValueError(f"config.model.num_classes={config.model.num_classes} but dataset {config.data.name!r} "
                             f"has {len(self.train_source.class_names)} classes {list(self.train_source.class_names)}")
        steps_per_epoch = len(self.train_source) // config.train.batch_size
        if steps_per_epoch == 0:
            raise ValueError(f"the training set has {len(self.train_source)} images, fewer than one batch of "
                             f"train.batch_size={config.train.batch_size}")
        self.total_steps = config.train.epochs * steps_per_epoch
        if config.train.max_steps > 0:
            self.total_steps = min(self.total_steps, config.train.max_steps)
        self.model = build_model(config)
        tx = make_optimizer(config.optim, self.total_steps)
        self.state = classification.create_state(self.model, tx, jax.random.PRNGKey(config.seed),
                                                 config.data.image_size, self.mesh)
        self.checkpointer = Checkpointer(self.workdir, model_fingerprint(config.model.name, self.state.params),
                                         config.train.max_to_keep)

    def pipeline(self, source, train: bool):
        data, per_process = self.config.data, jax.process_count()
        batch = (self.config.train.batch_size if train else self.config.train.eval_batch_size) // per_process
        return make_pipeline(source, batch_size=batch, image_size=data.image_size, train=train, seed=self.config.seed,
                             flips=tuple(data.flips) if train else (), num_workers=data.num_workers,
                             skip_corrupt=data.skip_corrupt)

    def train(self):
        """Train to ``total_steps``, resuming from the workdir's latest checkpoint when there is one."""
        config = self.config
        write_config(self.workdir, config)
        log = MetricsLog(self.workdir)
        batches = iter(self.pipeline(self.train_source, train=True))
        restored = self.checkpointer.restore(self.state)
        if restored is not None:
            self.state, extra = restored
            batches.set_state(extra["data"])
            log.trim_after(extra["step"])
            _say(f"resuming from step {extra['step']} of {self.total_steps} ({self.checkpointer.directory})")
        _say(f"{config.model.name}: {count_params(self.state.params):,} parameters; {len(self.train_source)} training "
             f"images; {self.total_steps} steps of batch {config.train.batch_size} on {self.mesh.devices.size} "
             f"{jax.devices()[0].platform} device(s)")
        self.state = train_loop(
            self.state, classification.make_train_step(config.loss, self.mesh), batches, mesh=self.mesh,
            total_steps=self.total_steps, checkpointer=self.checkpointer, log=log,
            log_every=config.train.log_every, checkpoint_every=config.train.checkpoint_every,
            images_per_step=config.train.batch_size)
        if jax.process_index() == 0:
            viz.save_training_curves(log.path, self.workdir / "training_curves.png")

    def _predict(self, source) -> dict:
        return classification.predict_dataset(
            self.state, classification.make_predict_step(self.mesh), iter(self.pipeline(source, train=False)),
            num_examples=len(source), local_batch=self.config.train.eval_batch_size // jax.process_count(),
            mesh=self.mesh)

    def restore_for_eval(self):
        restored = self.checkpointer.restore(self.state)
        if restored is None:
            raise FileNotFoundError(f"no checkpoint in {self.checkpointer.directory}; train first with "
                                    f"`python train.py --config=... --workdir={self.workdir}`")
        self.state = restored[0]

    def evaluate(self) -> dict:
        """Test-split metrics and pictures under ``<workdir>/eval``; prints the per-class report."""
        source = load_source(self.config, "test")
        predictions = self._predict(source)
        summary = {}
        if jax.process_index() == 0:
            summary = classification.write_evaluation(predictions, source, self.workdir / "eval")
            _say(classification.format_report(summary))
            _say(f"wrote {self.workdir / 'eval'} (metrics.json, confusion.png, predictions.csv)")
        return summary

    def predict_folder(self, folder) -> Path:
        """Class probabilities for every image in ``folder`` (recursively) -> ``<workdir>/eval/predict_<name>.csv``."""
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"--predict_dir {folder} is not a directory of images")
        paths = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
        names = list(self.train_source.class_names)
        source = Source([Record(p, 0) for p in paths], names)
        predictions = self._predict(source)
        out = self.workdir / "eval" / f"predict_{folder.name}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        probs = predictions["probs"]
        lines = ["path,prediction,confidence," + ",".join(f"p_{n}" for n in names)]
        for idx, row in zip(predictions["indices"], probs):
            lines.append(f"{paths[int(idx)]},{names[int(np.argmax(row))]},{row.max():.4f},"
                         + ",".join(f"{p:.4f}" for p in row))
        out.write_text("\n".join(lines) + "\n")
        _say(f"predicted {len(paths)} images -> {out}")
        return out


def train_and_evaluate(config, workdir) -> dict:
    """What ``train.py`` runs: train (resuming if possible), then evaluate on the test split."""
    experiment = Experiment(config, workdir)
    experiment.train()
    return experiment.evaluate()
