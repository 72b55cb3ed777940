"""A trained run in your own program: images in, predictions out, as ``eval.py --predict_dir`` makes them.

    from ssm_jax.inference import Predictor
    predictor = Predictor.from_run("runs/parts")        # config.json, train_set.json, the latest checkpoint
    out = predictor([frame, "part_0412.png"])           # arrays (uint8/uint16), PIL images and image files
    out["scores"], out["maps"], out.get("flagged")      # anomaly detectors (MambaAD, SNARM)
    out["probs"], out["predicted"], out.get("flagged")  # classifiers; predictor.class_names names the columns

A camera loop, a notebook or a line's service then needs neither the dataset nor the command the run was trained
with: only the run directory (a copy is enough). Every image goes through what the evaluation does to a file: the
colour rule of ``ssm_jax.data.images``, resizing to the run's size, its centre crop, ImageNet normalisation. So an
image file and its pixels in memory give the same prediction, and the same as ``eval.py --predict_dir``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from ssm_jax.data import Record, Source
from ssm_jax.data.common import crop_start, resized_side
from ssm_jax.data.pipeline import normalize
from ssm_jax.metrics import flag_column
from ssm_jax.training import classification
from ssm_jax.training.ema import evaluation_state
from ssm_jax.training.log import read_config
from ssm_jax.training.mesh import shard_batch
from ssm_jax.training.run import Experiment


def _dotted(overrides: dict, prefix: str = ""):
    """(dotted name, value) of every leaf of ``overrides``: {"eval": {"sigma": 2}} as {"eval.sigma": 2}."""
    for key, value in overrides.items():
        if isinstance(value, dict):
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _fetched(count: int, out: dict) -> dict:
    """A batch's results on the host, without the padding rows that filled the last batch across the devices."""
    return {k: np.asarray(v)[:count] for k, v in out.items()}


def _thread_count(workers: int | None) -> int:
    """The threads preparing images: ``workers``, or None for the machine's cores, at most 8."""
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers={workers}; expected at least 1 thread preparing images")
    return workers


def _refuse_pretraining(task: str) -> None:
    if task == "pretraining":
        raise ValueError("a config.task='pretraining' run predicts no classes or anomalies; predict with a run "
                         "fine-tuned from it (train.init_from)")


class Predictor:
    """Predictions of a restored ``Experiment`` for images given one call at a time (``from_run`` builds it).

    ``predictor(images)`` takes a sequence of images, each an array or a path (or one (B, H, W, C) array of
    several), and returns NumPy arrays, one row per image in order:

    * classifiers: ``probs`` (B, classes) float32, ``predicted`` (B,) the most probable class's index;
    * anomaly detectors: ``scores`` (B,) float32 and ``maps`` (B, size, size) float32, the anomaly map over the
      resized (and centre-cropped) image the model saw, on the evaluation's scale (float16 values, as eval keeps);
    * with ``eval.flag_threshold`` set: ``flagged`` (B,) bool, as the ``flagged`` column of eval's CSVs.

    Arrays are RGB (OpenCV's BGR frames: ``frame[..., ::-1]``), or grayscale. Up to ``train.eval_batch_size``
    images go through the model at once, in one compiled program per batch length. Each batch's images are prepared
    by ``workers`` threads (PIL resizes outside Python's lock), while the model runs on the batch before. Only the
    parameters evaluated (the moving average with ``optim.ema_decay``) and the model's state are read from the
    checkpoint and kept, not the optimizer's moments (``ema.evaluation_template``)."""

    def __init__(self, experiment: Experiment, workers: int | None = None):
        family = experiment.family
        _refuse_pretraining(experiment.config.task)
        self.config, self.mesh = experiment.config, experiment.mesh
        self.size = self.config.data.image_size
        train_set = experiment.train_source
        self.task, self.class_names = train_set.task, tuple(train_set.class_names)
        self._source = Source([], self.class_names, task=self.task, center_crop=train_set.center_crop,
                              bit_depth=train_set.bit_depth)
        self._state = evaluation_state(experiment.state)
        self._step = family.module.make_predict_step(self.mesh, **family.predict_kwargs(self.config))
        self.workers = _thread_count(workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="predictor")

    @classmethod
    def from_run(cls, workdir, overrides: dict | None = None, workers: int | None = None) -> Predictor:
        """The run in ``workdir`` at its latest checkpoint, with its own config (``config.json``); ``overrides``
        changes fields by dotted name as ``--config.`` flags do, e.g. ``{"eval.flag_threshold": 0.31}`` (or nested,
        ``{"eval": {"flag_threshold": 0.31}}``). ``workers``: threads preparing images (None: the cores, at most 8)."""
        if jax.process_count() > 1:
            raise RuntimeError("Predictor runs in one process; a multi-process job predicts a folder with eval.py "
                               "--predict_dir")
        workers = _thread_count(workers)  # before the restore, which takes seconds
        config = read_config(workdir)
        _refuse_pretraining(config.task)
        try:
            config.update_from_flattened_dict(dict(_dotted(overrides or {})))
        except (KeyError, TypeError, ValueError) as err:
            reason = err.args[0] if isinstance(err, KeyError) else err
            raise ValueError(f"overrides {dict(overrides)} do not fit the run's config.json ({workdir}): "
                             f"{reason}") from None
        experiment = Experiment.for_eval(config, workdir, predict_only=True)
        try:
            return cls(experiment, workers)
        finally:
            experiment.checkpointer.close()  # restored: its manager's threads and the full train state can go

    def pixels(self, image, name: str = "image") -> np.ndarray:
        """One image (array or path) as the model sees it before normalisation: uint8 (size, size, 3)."""
        if isinstance(image, (str, os.PathLike)):
            path = Path(image).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"{name}: image file {str(path)!r} does not exist")
            return self._source.load(Record(str(path), 0), self.size)["image"]
        if not isinstance(image, Image.Image) and np.ndim(image) == 0:  # None, a number, bytes: no pixels, no path
            raise ValueError(f"{name} is not an image (type {type(image).__name__}); expected a path to an image "
                             f"file, or pixels: a (height, width) or (height, width, channels) uint8/uint16 array, or "
                             f"a PIL image")
        return self._source.load_array(image, self.size, name)

    def frame_map(self, anomaly_map, height: int, width: int) -> np.ndarray:
        """One of ``maps`` (size, size) laid on its (height, width) frame, to draw on the frame itself: resized
        (bilinear) over the part of the frame the model saw, NaN on the border a centre crop leaves unscored. Only an
        anomaly detector has maps: a classifier's run is refused rather than given back a map it never made."""
        if self.task == "classification":
            raise ValueError(f"frame_map needs an anomaly-detection run (MambaAD or SNARM), and this is a "
                             f"{self.config.model.name} classifier: its predictions are per image ('probs' and "
                             f"'predicted'), with no anomaly map to lay on a frame")
        outer = resized_side(self.size, self._source.center_crop)
        start = crop_start(outer, self.size)  # where crop_centre cuts the model's square from the resized image
        top, bottom = round(start * height / outer), round((start + self.size) * height / outer)
        left, right = round(start * width / outer), round((start + self.size) * width / outer)
        out = np.full((height, width), np.nan, np.float32)
        scored = Image.fromarray(np.asarray(anomaly_map, np.float32), mode="F")
        out[top:bottom, left:right] = np.asarray(scored.resize((right - left, bottom - top), Image.BILINEAR))
        return out

    def __call__(self, images) -> dict:
        shape = getattr(images, "shape", None)  # any array type: NumPy, JAX, ...
        if isinstance(images, (str, os.PathLike)) or (shape is not None and len(shape) != 4):
            raise ValueError(f"Predictor takes a sequence of images: a list, or one (batch, height, width, channels) "
                             f"array{'' if shape is None else f', not {tuple(shape)}'}; for one image, pass [image]")
        chunk, devices = self.config.train.eval_batch_size, self.mesh.devices.size
        named = [(image, f"image {i}") for i, image in enumerate(images)]
        outputs, running = [], None  # one batch on the device while the next is prepared, at most two held there
        for start in range(0, len(named), chunk):
            part = self._prepared(named[start:start + chunk])
            padded = np.concatenate([part, np.zeros((-len(part) % devices,) + part.shape[1:], part.dtype)])
            dispatched = (len(part), self._step(self._state, shard_batch({"image": padded}, self.mesh)["image"]))
            if running:
                outputs.append(_fetched(*running))
            running = dispatched
        if running:
            outputs.append(_fetched(*running))
        return self._finish({k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]} if outputs
                            else self._empty())

    def _prepared(self, named: list) -> np.ndarray:
        """(image, name) pairs as one normalised batch, each image prepared by one of the pool's threads."""
        return normalize(np.stack(list(self._pool.map(lambda pair: self.pixels(*pair), named))))

    def _empty(self) -> dict:
        if self.task == "classification":
            return {"probs": np.zeros((0, len(self.class_names)), np.float32)}
        return {"scores": np.zeros((0,), np.float32), "maps": np.zeros((0, self.size, self.size), np.float32)}

    def _finish(self, out: dict) -> dict:
        threshold = self.config.eval.flag_threshold
        if self.task == "classification":
            out = {"probs": out["probs"].astype(np.float32), "predicted": np.argmax(out["probs"], -1)}
            flags = classification.group_flag_column(out["probs"], self.config.eval.binary_from, threshold)
        else:
            out = {"scores": out["scores"].astype(np.float32), "maps": out["maps"].astype(np.float32)}
            flags = flag_column(out["scores"], threshold)
        return {**out, **{k: v.astype(bool) for k, v in flags.items()}}
