"""Residual anomaly detection (SNARM): the bank of normal patches, the jitted train step on synthetic defects, and
the same predictions and evaluation outputs as MambaAD (``write_evaluation``, metrics, tables and overlays are
``ssm_jax.training.reconstruction``'s).

The bank is built when the state is created, from the training split (normal images only), on the device in
batches: pass 1 runs the frozen encoder and keeps only each patch's random projection (``bank.projection_dim``
dims), so the greedy k-center coreset (``ssm_jax.models.patch_bank``) sees O(patches x projection_dim) floats;
pass 2 runs the encoder again and keeps the chosen patches' full features. Before both, at most
``bank.max_patches`` patches are kept by a seeded uniform draw (the official code caps at 1,000,000). The bank holds
``max(1, int(kept * bank.coreset_ratio))`` rows and lives in the state's variable collection ``bank`` (features and
each row's training-image index), so checkpoints, resume and ``eval.py`` carry it: a resumed run or ``eval.py``
restores it from the checkpoint instead of building it (``create_state(bank_from_checkpoint=True)``).

Training (``config.loss``; choices, as the paper's training recipe was not available here: see
``ssm_jax.models.snarm``): every step pastes synthetic defects into a share ``defects.fraction`` of the batch on the
device (``ssm_jax.data.pasted_defects``), searches the bank leaving each image's own patches out
(``exclude_own_image``: the training images are in the bank, test images are not, so without it training residuals
of normal patches would be near zero), and minimises the mean over heads of the binary focal loss of each head's
upsampled logits against the defect mask, plus ``selector_weight`` x the selector's cross-entropy against the mask's
share of each feature cell (the selector only steers the reference choice, which is not differentiable, so it needs
its own target).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ssm_jax.data import make_pipeline
from ssm_jax.data.pasted_defects import paste_defects
from ssm_jax.losses import binary_focal_loss
from ssm_jax.models.patch_bank import greedy_coreset, random_projection
from ssm_jax.models.snarm import SNARM, anomaly_map_from_logits
from ssm_jax.nn.resample import upsample_bilinear_align_corners
from ssm_jax.training import state as state_lib
from ssm_jax.training.accumulate import check_grad_accum_steps, mean_over_micro_batches
from ssm_jax.training.ema import eval_params
from ssm_jax.training.mesh import jit_predict, jit_train_step
from ssm_jax.training.pretrained_encoder import read_encoder_weights, with_encoder
from ssm_jax.training.reconstruction import (FROZEN, format_report, predict_dataset, warn_if_random_encoder,
                                             write_evaluation, write_folder_predictions)
from ssm_jax.training.state import TrainState

# The task-family functions (run.Family); evaluation and its outputs are MambaAD's.
__all__ = ["FROZEN", "create_state", "make_train_step", "make_predict_step", "predict_dataset", "write_evaluation",
           "write_folder_predictions", "format_report", "warn_if_random_encoder", "state_kwargs", "build_bank",
           "bank_layout", "snarm_loss"]


@dataclasses.dataclass(frozen=True)
class BankLayout:
    """How many patches the training images give and how many the bank keeps."""

    num_images: int
    grid: tuple[int, int]      # feature map (h, w); each image gives h * w patches
    channels: int
    kept: np.ndarray | None    # sorted global patch rows kept before the coreset (None: all)
    size: int                  # bank rows

    @property
    def rows_per_image(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_kept(self) -> int:
        return self.num_images * self.rows_per_image if self.kept is None else len(self.kept)


def bank_layout(model: SNARM, image_size: int, num_images: int, bank, seed: int = 0) -> BankLayout:
    """Sizes from the model's feature map at ``image_size`` and ``config.bank`` (coreset_ratio, max_patches)."""
    if not 0 < bank.coreset_ratio <= 1:
        raise ValueError(f"config.bank.coreset_ratio={bank.coreset_ratio} must lie in (0, 1]")
    if num_images < 1:
        raise ValueError("the bank needs at least one normal training image; the training split is empty")
    shape = jax.eval_shape(lambda key, x: model.init_with_output(key, x, method=SNARM.patch_features)[0],
                           jax.random.key(0), jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
    _, h, w, channels = shape.shape
    total = num_images * h * w
    kept = None
    if bank.max_patches and total > bank.max_patches:
        kept = np.sort(np.random.default_rng(seed).choice(total, bank.max_patches, replace=False))
    layout = BankLayout(num_images, (h, w), channels, kept, 0)
    return dataclasses.replace(layout, size=max(1, int(layout.num_kept * bank.coreset_ratio)))


def _batch_rows(batch, layout: BankLayout) -> tuple[np.ndarray, np.ndarray]:
    """(global rows of a batch's patches, positions within the batch of those kept before the coreset)."""
    rows = (np.asarray(batch["index"], np.int64)[:, None] * layout.rows_per_image
            + np.arange(layout.rows_per_image)).reshape(-1)
    if layout.kept is None:
        return rows, np.arange(len(rows))
    pos = np.minimum(np.searchsorted(layout.kept, rows), len(layout.kept) - 1)
    return rows, np.flatnonzero(layout.kept[pos] == rows)


def build_bank(features_fn, batches, layout: BankLayout, projection_dim: int | None = 128, seed: int = 0,
               missing_ok: bool = False):
    """(features (size, C) float32, image_index (size,) int32, rows): the coreset of the training patches.

    ``features_fn(images) -> (B, h, w, C)`` on the device; ``batches()`` returns a fresh iterator over the normal
    training images (dicts with ``image`` and the source ``index``). Rows are in greedy selection order; ``rows``
    are the global patch indices drawn (image index x h*w + position). The batches must cover every training image
    once, unless ``missing_ok`` (``data.skip_corrupt``: unreadable files are left out): then the bank draws from the
    images read, and rows it has no patch for repeat the rows drawn, so that its size stays the layout's (the one a
    resumed run or ``eval.py`` computes from the split's size).
    """
    if layout.size < layout.num_kept:
        project = jax.jit(lambda f: random_projection(f.reshape(-1, f.shape[-1]), projection_dim, seed)
                          if projection_dim and projection_dim < f.shape[-1] else f.reshape(-1, f.shape[-1]))
        projected, order = [], []
        for batch in batches():
            rows, pos = _batch_rows(batch, layout)
            projected.append(np.asarray(project(features_fn(jnp.asarray(batch["image"]))))[pos])
            order.append(rows[pos])
        order = np.concatenate(order) if order else np.zeros(0, np.int64)
        if len(order) != layout.num_kept and not (missing_ok and len(order)):
            raise ValueError(f"the training batches gave {len(order)} of the {layout.num_kept} patches the bank "
                             f"draws from; they must cover every training image once")
        sorting = np.argsort(order, kind="stable")
        candidates, projected = order[sorting], np.concatenate(projected)[sorting]
        chosen = candidates[np.asarray(greedy_coreset(projected, min(layout.size, len(candidates)), seed,
                                                      projection_dim=None))]
    else:
        chosen = np.arange(layout.num_kept) if layout.kept is None else layout.kept
    slot = np.argsort(chosen, kind="stable")
    sorted_rows = chosen[slot]
    bank = np.zeros((layout.size, layout.channels), np.float32)
    image_index = np.zeros(layout.size, np.int32)
    image_index[:len(chosen)] = chosen // layout.rows_per_image
    filled = np.zeros(layout.size, bool)
    for batch in batches():
        rows = _batch_rows(batch, layout)[0]
        where = np.minimum(np.searchsorted(sorted_rows, rows), len(chosen) - 1)
        hit = np.flatnonzero(sorted_rows[where] == rows)
        if len(hit):
            flat = np.asarray(features_fn(jnp.asarray(batch["image"]))).reshape(-1, layout.channels)
            bank[slot[where[hit]]] = flat[hit]
            filled[slot[where[hit]]] = True
    if not filled.all():
        if not (missing_ok and filled.any()):
            raise ValueError(f"{int((~filled).sum())} bank rows were not produced by the training batches; the "
                             f"batches must cover every training image once (source indices "
                             f"0..{layout.num_images - 1})")
        given, empty = np.flatnonzero(filled), np.flatnonzero(~filled)
        repeated = given[np.arange(len(empty)) % len(given)]
        bank[empty], image_index[empty] = bank[repeated], image_index[repeated]
    return jnp.asarray(bank), jnp.asarray(image_index), chosen


def create_state(model: SNARM, tx, rng, image_size: int, mesh, *, encoder_weights: str = "", bank_source=None,
                 bank=None, batch_size: int = 32, num_workers: int = 0, skip_corrupt: bool = False,
                 seed: int = 0, bank_from_checkpoint: bool = False) -> TrainState:
    """Initialise, put the pretrained encoder in (``encoder_weights``), build the bank from ``bank_source`` (the
    normal training images) with ``bank`` (``config.bank``), replicate over the mesh.

    With ``bank_from_checkpoint`` the bank is left as zeros of its shape, for a state that a checkpoint restore
    fills (a resumed run, ``eval.py``): building it costs two encoder passes over the training set (about 65 s at
    full size on a GPU) that the restore would overwrite."""
    encoder = (read_encoder_weights(model.encoder, encoder_weights, max(model.feature_layers)) if encoder_weights
               else None)
    layout = bank_layout(model, image_size, len(bank_source), bank, seed)
    model = model.clone(bank_size=layout.size)

    passes = iter(("bank: encoding the training images", "bank: gathering the chosen patches"))

    def batches():  # a progress bar per pass over the training images (two when a coreset is drawn)
        pipeline = make_pipeline(bank_source, batch_size=batch_size, image_size=image_size, train=False, seed=seed,
                                 shard_index=0, shard_count=1, num_workers=num_workers, skip_corrupt=skip_corrupt)
        return iter(tqdm(pipeline, total=-(-len(bank_source) // batch_size), desc=next(passes, "bank"), unit="batch",
                         disable=jax.process_index() != 0, leave=False, dynamic_ncols=True))

    def prepare(variables):
        if encoder is not None:
            variables = with_encoder(variables, encoder, f"{model.encoder} checkpoint {encoder_weights}")
        if bank_from_checkpoint:
            return {**variables, "bank": {"features": jnp.zeros((layout.size, layout.channels), jnp.float32),
                                          "image_index": jnp.zeros((layout.size,), jnp.int32)}}
        # The variables go in as an argument: closed over, the encoder's weights were compiled in as constants
        # (wide_resnet50_2's features at 64 px, on the CPU: 2.4 s to compile against 1.8 s).
        features = functools.partial(jax.jit(functools.partial(model.apply, method=SNARM.patch_features)), variables)
        start = time.perf_counter()
        rows, image_index, _ = build_bank(features, batches, layout, bank.projection_dim, seed, skip_corrupt)
        if jax.process_index() == 0:
            print(f"bank: {layout.size:,} of {layout.num_kept:,} patches ({layout.num_images} normal images, "
                  f"{layout.grid[0]}x{layout.grid[1]} each, {layout.channels} channels, "
                  f"{rows.nbytes / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s", flush=True)
        return {**variables, "bank": {"features": rows, "image_index": image_index}}

    return state_lib.create_state(model, tx, rng, image_size, mesh, prepare)


def state_kwargs(config, train_source, resuming: bool = False) -> dict:
    """``create_state``'s keyword arguments from a config and its training split (a ``Source``, or with ``resuming``
    its ``TrainSet``: only its size shapes the bank); ``resuming``: a checkpoint will be restored into the state,
    encoder and bank included, so neither the encoder's weights file is read nor the bank built."""
    return {"encoder_weights": "" if resuming else config.model.encoder_weights, "bank_source": train_source,
            "bank": config.bank, "batch_size": config.train.eval_batch_size, "num_workers": config.data.num_workers,
            "skip_corrupt": config.data.skip_corrupt, "seed": config.seed, "bank_from_checkpoint": resuming}


def cell_shares(masks: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """(B, H, W) masks -> (B, h, w): the anomalous share of each feature cell (H, W multiples of h, w)."""
    b, height, width = masks.shape
    h, w = grid
    if height % h or width % w:
        raise ValueError(f"image {height}x{width} is not a multiple of the feature grid {h}x{w}")
    return masks.reshape(b, h, height // h, w, width // w).mean(axis=(2, 4))


def snarm_loss(outputs: dict, masks: jax.Array, loss_config) -> tuple[jax.Array, dict]:
    """(total, parts): mean over heads of the focal loss of each head's upsampled logits against ``masks``
    (B, H, W), plus ``selector_weight`` x the selector's cross-entropy against each cell's anomalous share."""
    logits = outputs["logits"]
    up = upsample_bilinear_align_corners(jnp.moveaxis(logits, 1, -1), masks.shape[1:3])
    heads = binary_focal_loss(up, jnp.broadcast_to(masks[..., None], up.shape), loss_config.focal_gamma,
                              loss_config.focal_alpha)
    selector = binary_focal_loss(outputs["selector"], cell_shares(masks, logits.shape[2:]), 0.0, -1.0)
    total = heads + loss_config.selector_weight * selector
    return total, {"loss_heads": heads, "loss_selector": selector}


def make_train_step(loss_config, mesh, grad_accum_steps: int = 1):
    """``(state, batch) -> (state, {"loss", "loss_heads", "loss_selector"})``: synthetic defects pasted into the
    batch, the SNARM loss, batch statistics updated; jitted and sharded.

    With ``grad_accum_steps`` = k > 1 the batch is taken as k micro-batches in turn (``training.accumulate``), each
    with its own defects and dropout, and their mean gradient makes one optimizer update; the heads' running batch
    statistics become the mean of the micro-batches' updates (their BatchNorm normalises over batch / k images).
    """
    defects = loss_config.defects

    def grads_and_updates(state: TrainState, batch, rng):
        images, masks, _ = paste_defects(batch["image"], jax.random.fold_in(rng, 0), defects.fraction,
                                         tuple(defects.area), tuple(defects.opacity))
        groups = batch["index"] if loss_config.exclude_own_image else None

        def loss_fn(params):
            outputs, updates = state.apply_fn({"params": params, **state.model_state}, images, train=True,
                                              query_groups=groups, rngs={"dropout": jax.random.fold_in(rng, 1)},
                                              mutable=["batch_stats"])
            loss, parts = snarm_loss(outputs, masks, loss_config)
            return loss, (updates, parts)

        (loss, (updates, parts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        trained = {name: {k: v for k, v in tree.items() if k not in FROZEN} for name, tree in updates.items()}
        return grads, {"loss": loss, **parts}, trained

    def step(state: TrainState, batch):
        micro_batch = {"image": batch["image"], "index": batch["index"]}
        grads, metrics, updates = mean_over_micro_batches(
            lambda micro, rng: grads_and_updates(state, micro, rng), micro_batch, state.step_rng(),
            grad_accum_steps, mesh)
        return state.apply_gradients_and_updates(grads, updates), metrics

    check_grad_accum_steps(grad_accum_steps)
    return jit_train_step(mesh, step)


def make_predict_step(mesh, sigma: float, score_pool: int = 16, score_stride: int = 2):
    """``(state, images) -> {"maps" (B, H, W) float16, "scores" (B,)}``, as MambaAD's (scores from float32 maps)."""

    def predict(state: TrainState, images):
        outputs = state.apply_fn({"params": eval_params(state), **state.model_state}, images, train=False)
        maps, scores = anomaly_map_from_logits(outputs["logits"], images.shape[1:3], sigma, score_pool, score_stride)
        return {"maps": maps.astype(jnp.float16), "scores": scores}

    return jit_predict(mesh, predict)
