"""Masked-image pretraining task family (``config.task = "pretraining"``): a MemoryMamba backbone learns to fill in
hidden patches of the training images (``models.masked_image``, SimMIM); labels are not read.

``config.loss.mask_ratio`` of each image's ``config.loss.mask_patch``-pixel patches are hidden, drawn afresh every
step from the step's key (so a resumed run draws the same masks). Evaluation hides the same share of every test
image with masks drawn from a fixed key, and reports the mean absolute error over the hidden pixels (in normalised
units) and a picture of reconstructions. A classifier then starts from the backbone with
``--config.train.init_from=<this run's workdir>`` (``training.init_from``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ssm_jax import viz
from ssm_jax.data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from ssm_jax.models.masked_image import MaskedImageModel, masked_l1, random_mask
from ssm_jax.training import init_from as init_lib
from ssm_jax.training import state as state_lib
from ssm_jax.training.accumulate import check_grad_accum_steps, mean_over_micro_batches
from ssm_jax.training.ema import eval_params
from ssm_jax.training.gather import gather_predictions
from ssm_jax.training.mesh import jit_predict, jit_train_step
from ssm_jax.training.state import TrainState

MASK_STREAM = 2  # fold_in index of the mask draws within a step's key (dropout draws from the key itself)
EVAL_MASK_SEED = 0
PICTURE_SIDE = 56  # evaluation keeps images and reconstructions shrunk (by 4 or 2) while this many pixels remain


def check_loss_config(loss_config) -> None:
    """mask_ratio in (0, 1) and a positive mask_patch, or a clear error."""
    if not 0.0 < loss_config.mask_ratio < 1.0:
        raise ValueError(f"loss.mask_ratio={loss_config.mask_ratio}; expected a share of patches in (0, 1)")
    if loss_config.mask_patch < 1:
        raise ValueError(f"loss.mask_patch={loss_config.mask_patch}; expected a patch side in pixels (e.g. 32)")


def create_state(model, tx, rng, image_size: int, mesh, mask_patch: int = 32, init_from: str = "",
                 init_exclude=("head",)) -> TrainState:
    """The backbone wrapped with the pixel decoder, initialised on one image (then from run ``init_from``'s matching
    parameters, when given: a longer pretraining from a shorter one) and replicated over the mesh."""
    return state_lib.create_state(MaskedImageModel(model, mask_patch), tx, rng, image_size, mesh,
                                  prepare=init_lib.preparer(init_from, init_exclude))


def _masks(key, images, loss_config):
    grid = (images.shape[1] // loss_config.mask_patch, images.shape[2] // loss_config.mask_patch)
    return random_mask(key, images.shape[0], grid, loss_config.mask_ratio)


def make_train_step(loss_config, mesh, grad_accum_steps: int = 1):
    """``(state, batch) -> (state, {"loss"})``, jitted with the batch sharded and the state replicated; the loss is
    the mean over images of the masked pixels' absolute error."""

    def grads_and_metrics(state: TrainState, batch, rng):
        images = batch["image"]
        mask = _masks(jax.random.fold_in(rng, MASK_STREAM), images, loss_config)

        def loss_fn(params):
            out = state.apply_fn({"params": params, **state.model_state}, images, train=True, mask=mask,
                                 rngs={"dropout": rng})
            return masked_l1(out["reconstruction"], images, out["pixel_mask"]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return grads, {"loss": loss}

    def step(state: TrainState, batch):
        grads, metrics = mean_over_micro_batches(lambda micro, rng: grads_and_metrics(state, micro, rng), batch,
                                                 state.step_rng(), grad_accum_steps, mesh)
        return state.apply_gradients(grads=grads), metrics

    check_grad_accum_steps(grad_accum_steps)
    check_loss_config(loss_config)
    return jit_train_step(mesh, step)


def _pooled(x, factor: int):
    """(B, H, W, ...) -> (B, H / factor, W / factor, ...) by averaging factor x factor squares, as float16."""
    b, h, w = x.shape[:3]
    x = x.astype(jnp.float32).reshape(b, h // factor, factor, w // factor, factor, *x.shape[3:])
    return x.mean(axis=(2, 4)).astype(jnp.float16)


def _picture_pool(height: int, width: int) -> int:
    """The largest of 4, 2, 1 that divides both sides and leaves at least ``PICTURE_SIDE`` pixels."""
    return next(f for f in (4, 2, 1) if height % f == 0 and width % f == 0 and min(height, width) // f >= PICTURE_SIDE
                or f == 1)


def make_predict_step(mesh, loss_config):
    """``(state, images) -> {"l1", "image", "reconstruction", "pixel_mask"}``: each image's masked-pixel error under
    a mask drawn from a fixed key, plus the image, its reconstruction and the mask for the picture, shrunk to no less
    than ``PICTURE_SIDE`` pixels a side (``_picture_pool``)."""
    check_loss_config(loss_config)

    def predict(state: TrainState, images):
        mask = _masks(jax.random.PRNGKey(EVAL_MASK_SEED), images, loss_config)
        out = state.apply_fn({"params": eval_params(state), **state.model_state}, images, train=False, mask=mask)
        pool = _picture_pool(*images.shape[1:3])
        return {"l1": masked_l1(out["reconstruction"], images, out["pixel_mask"]),
                "image": _pooled(images, pool), "reconstruction": _pooled(out["reconstruction"], pool),
                "pixel_mask": _pooled(out["pixel_mask"], pool)}

    return jit_predict(mesh, predict)


def predict_dataset(state, predict_step, batches, *, num_examples: int, local_batch: int, mesh,
                    example: Callable[[], dict] | None = None) -> dict:
    """The predict step's outputs and source ``indices`` of every example, from all processes."""
    return gather_predictions(state, predict_step, batches, num_examples=num_examples, local_batch=local_batch,
                              mesh=mesh, example=example, keep=lambda batch: {"indices": batch["index"]})


def _display(normalised):
    """Normalised NHWC images -> [0, 1] for a picture."""
    return np.clip(np.asarray(normalised, np.float32) * IMAGENET_STD + IMAGENET_MEAN, 0.0, 1.0)


def save_reconstructions(predictions: dict, path, max_images: int = 8) -> Path:
    """``viz.save_masked_reconstructions`` of the first ``max_images`` predictions (denormalised)."""
    n = min(max_images, len(predictions["l1"]))
    return viz.save_masked_reconstructions(_display(predictions["image"][:n]), predictions["pixel_mask"][:n],
                                           _display(predictions["reconstruction"][:n]), path,
                                           errors=predictions["l1"][:n], max_images=max_images)


def write_evaluation(predictions: dict, source, out_dir) -> dict:
    """``metrics.json`` (mean and per-image masked-pixel error) and ``reconstructions.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    l1 = np.asarray(predictions["l1"], np.float64)
    summary = {"masked_l1": float(l1.mean()), "masked_l1_std": float(l1.std()), "num_images": int(len(l1)),
               "per_image": {source[int(i)].path: float(v) for i, v in zip(predictions["indices"], l1)}}
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    save_reconstructions(predictions, out_dir / "reconstructions.png")
    return summary


def write_folder_predictions(predictions: dict, source, out_dir, name: str) -> Path:
    """``predict_<name>.csv`` (each image's masked-pixel error, in path order) and ``predict_<name>.png``."""
    out = Path(out_dir) / f"predict_{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["path,masked_l1"] + [f"{source[int(i)].path},{l1:.5f}"
                                  for i, l1 in zip(predictions["indices"], predictions["l1"])]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    save_reconstructions(predictions, out.with_suffix(".png"))
    return out


def format_report(summary: dict) -> str:
    return (f"masked-pixel L1 {summary['masked_l1']:.4f} +- {summary['masked_l1_std']:.4f} (normalised units) on "
            f"{summary['num_images']} test images")
