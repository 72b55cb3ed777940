"""Reconstruction-based anomaly detection (MambaAD): train state with a frozen pretrained encoder, jitted
train/predict steps, and the evaluation outputs (per-category metrics, Markdown table, scores, curves, overlays)."""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ssm_jax import viz
from ssm_jax.losses import feature_mse_loss
from ssm_jax.metrics import (anomaly_metrics_by_category, display_width, flag_column, flag_rates, left_justified,
                             operating_point_lines, operating_points)
from ssm_jax.models.mambaad import ENCODER_STAGES, anomaly_map_from_features
from ssm_jax.training.accumulate import check_grad_accum_steps, mean_over_micro_batches
from ssm_jax.training.ema import eval_params
from ssm_jax.training.gather import gather_predictions, rows_in_source_order
from ssm_jax.training.mesh import jit_predict, jit_train_step
from ssm_jax.training.pretrained_encoder import read_encoder_weights, with_encoder
from ssm_jax.training import state as state_lib
from ssm_jax.training.state import TrainState

# Top-level parameter subtrees the optimizer leaves alone: the pretrained encoder.
FROZEN = ("encoder",)
# metrics.md / report columns: (key, header), in MambaAD's Table 1 order.
COLUMNS = (("i_auroc", "I-AUROC"), ("i_ap", "I-AP"), ("i_f1max", "I-F1max"), ("p_auroc", "P-AUROC"),
           ("p_ap", "P-AP"), ("p_f1max", "P-F1max"), ("p_aupro", "P-AUPRO"), ("mad", "mAD"))


def warn_if_random_encoder(config) -> None:
    """Said once when training starts from scratch without ``config.model.encoder_weights`` (not on resume, not
    when a converted checkpoint is evaluated: those hold their encoder)."""
    if config.model.encoder_weights:
        return
    arch = config.model.encoder
    if jax.process_index() == 0:
        print(f"warning: config.model.encoder_weights is empty, so the frozen {arch} encoder keeps its random "
              f"initialisation and the detector will be weak. Save ImageNet weights where you have them, e.g. "
              f"torch.save(timm.create_model('{arch}', pretrained=True).state_dict(), '{arch}.pth') or "
              f"torchvision.models.{arch}(weights='DEFAULT').state_dict() (README: which one the paper used), "
              f"and pass --config.model.encoder_weights={arch}.pth", file=sys.stderr, flush=True)


def create_state(model, tx, rng, image_size: int, mesh, encoder_weights: str = "") -> TrainState:
    """Initialise on one image, put the pretrained encoder in (``encoder_weights``, a torchvision/timm checkpoint of
    ``model.encoder``, read first so a bad path fails fast), replicate over the mesh."""
    encoder = read_encoder_weights(model.encoder, encoder_weights, max(ENCODER_STAGES)) if encoder_weights else None
    if encoder is None:
        return state_lib.create_state(model, tx, rng, image_size, mesh)
    where = f"{model.encoder} checkpoint {encoder_weights}"
    return state_lib.create_state(model, tx, rng, image_size, mesh, lambda v: with_encoder(v, encoder, where))


def _trained_only(collection: dict) -> dict:
    """A model-state collection without the frozen subtrees (the encoder runs in inference mode: its batch
    statistics never change)."""
    return {k: v for k, v in collection.items() if k not in FROZEN}


def make_train_step(loss_config, mesh, grad_accum_steps: int = 1):
    """``(state, batch) -> (state, {"loss"})``: feature MSE, batch statistics updated, jitted and sharded.

    With ``grad_accum_steps`` = k > 1 the batch is taken as k micro-batches in turn (``training.accumulate``): one
    optimizer update with their mean gradient, and the bottleneck's running batch statistics set to the mean of
    the k micro-batches' updates (one moving-average step per optimizer step, as without accumulation). The loss
    is a mean over images, but the bottleneck's BatchNorm normalises over the batch it sees, here batch / k
    images (as each GPU of a PyTorch DDP job normalises over its local batch), so the gradient is the mean of the
    micro-batches' gradients rather than exactly the big batch's.
    """

    def grads_and_updates(state: TrainState, batch, rng):
        def loss_fn(params):
            outputs, updates = state.apply_fn({"params": params, **state.model_state}, batch["image"], train=True,
                                              rngs={"dropout": rng}, mutable=["batch_stats"])
            return feature_mse_loss(outputs["encoder"], outputs["decoder"], loss_config.weight), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return grads, {"loss": loss}, {name: _trained_only(tree) for name, tree in updates.items()}

    def step(state: TrainState, batch):
        grads, metrics, updates = mean_over_micro_batches(
            lambda micro, rng: grads_and_updates(state, micro, rng), batch, state.step_rng(), grad_accum_steps, mesh)
        return state.apply_gradients_and_updates(grads, updates), metrics

    check_grad_accum_steps(grad_accum_steps)
    return jit_train_step(mesh, step)


def make_predict_step(mesh, sigma: float):
    """``(state, images) -> {"maps" (B, H, W) float16, "scores" (B,)}`` at the input size; maps are float16 to halve
    what is gathered and kept on the host (scores come from the float32 maps)."""

    def predict(state: TrainState, images):
        outputs = state.apply_fn({"params": eval_params(state), **state.model_state}, images, train=False)
        maps, scores = anomaly_map_from_features(outputs["encoder"], outputs["decoder"], images.shape[1:3], sigma)
        return {"maps": maps.astype(jnp.float16), "scores": scores}

    return jit_predict(mesh, predict)


def host_fields(batch: dict) -> dict:
    """The host-side fields an AD evaluation keeps from each input batch."""
    return {"labels": batch["label"], "indices": batch["index"], "masks": batch["mask"][..., 0] > 0.5,
            "has_mask": batch["has_mask"]}


def predict_dataset(state, predict_step, batches, *, num_examples: int, local_batch: int, mesh,
                    example: Callable[[], dict] | None = None) -> dict:
    """``maps``, ``scores``, ``labels``, ``masks`` (bool), ``has_mask`` and source ``indices`` of every example."""
    return gather_predictions(state, predict_step, batches, num_examples=num_examples, local_batch=local_batch,
                              mesh=mesh, example=example, keep=host_fields)


def overlay_rows(labels, categories, per_category: int) -> dict[str, np.ndarray]:
    """Rows drawn for each category's overlay picture: up to half anomalous (first), the rest normal, each group
    evenly spaced in row order (so defect types spread out, and the same rows every run)."""
    labels, categories = np.asarray(labels), np.asarray(categories)
    chosen = {}
    for category in sorted(set(categories.tolist())):
        bad = np.flatnonzero((categories == category) & (labels == 1))
        good = np.flatnonzero((categories == category) & (labels == 0))
        n_bad = min(len(bad), per_category // 2)
        n_good = min(len(good), per_category - n_bad)
        chosen[category] = np.concatenate([_spread(bad, n_bad), _spread(good, n_good)])
    return chosen


def _spread(rows: np.ndarray, n: int) -> np.ndarray:
    """``n`` (at most ``len(rows)``) of ``rows``, evenly spaced from the first to the last."""
    return rows[np.linspace(0, len(rows) - 1, n).round().astype(int)]


def _file_name(name: str) -> str:
    """A category's overlay file name: the name as it is (spaces and any script kept, so "部品 A" and "部品_A" stay
    apart), less the characters that Windows or a POSIX path refuses."""
    return re.sub(r'[\x00-\x1f<>:"/\\|?*]', "_", name).rstrip(". ") or "all"


def _overlay_title(index: int, record, labelled: bool) -> str:
    """``#<source index> <file name>`` and, for test images, the truth: "good" or the defect type."""
    title = f"#{index} {_shorten(os.path.basename(record.path), 28)}"
    if not labelled:
        return title
    truth = "good" if record.label == 0 else (record.defect or "anomalous")
    return f"{title}\n{_shorten(truth, 32)}"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def save_overlays(source, predictions: dict, rows, path, with_masks: bool, labelled: bool = True) -> Path:
    """Anomaly-map overlays of prediction ``rows``, images reloaded from ``source`` at the maps' size (uint8),
    each titled with its source index (``scores.csv``'s ``index``), file name and, if ``labelled``, its truth."""
    size = predictions["maps"].shape[1]
    indices = [int(predictions["indices"][r]) for r in rows]
    kept, images = source.load_shown(indices, Path(path).name, size)
    if not images:
        return Path(path)
    rows, indices = np.asarray(rows)[kept], [indices[k] for k in kept]
    masks = predictions["masks"][rows] if with_masks else None
    titles = [_overlay_title(i, source[i], labelled) for i in indices]
    mask_titles = "ground truth"
    if with_masks:  # a defective part annotated at image level only is not drawn as a clean one
        unannotated = (predictions["labels"][rows] == 1) & ~np.asarray(predictions["has_mask"][rows], bool)
        mask_titles = ["no mask (image-level label)" if u else "ground truth" for u in unannotated]
    return viz.save_anomaly_overlays(np.stack(images), predictions["maps"][rows].astype(np.float32), path, masks=masks,
                                     scores=predictions["scores"][rows], max_images=len(rows), titles=titles,
                                     mask_title=mask_titles)


def _percent(metrics: dict, key: str) -> str:
    """A metric in percent, "–" where it is absent (no pixel annotations) or undefined (NaN: one class only)."""
    value = metrics.get(key)
    return "–" if value is None or np.isnan(value) else f"{100 * value:.1f}"


def _json_safe(tree):
    """NaN (an undefined metric) -> None, so metrics.json is valid JSON (null)."""
    if isinstance(tree, dict):
        return {k: _json_safe(v) for k, v in tree.items()}
    return None if isinstance(tree, float) and np.isnan(tree) else tree


def metrics_table(summary: dict) -> str:
    """A Markdown table like MambaAD's Table 1: a row per category and the mean, metrics in percent."""
    lines = ["| category | " + " | ".join(header for _, header in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    rows = [*summary["per_category"].items(), ("**mean**", summary["mean"])]
    lines += [f"| {name} | " + " | ".join(_percent(m, key) for key, _ in COLUMNS) + " |" for name, m in rows]
    return "\n".join(lines) + "\n"


def write_evaluation(predictions: dict, source, out_dir, num_overlays: int = 16, flag_threshold: float = 0.0) -> dict:
    """Under ``out_dir``: metrics.json (per category and mean), metrics.md, scores.csv (one row per test image, its
    ``index`` in the test source: a synthetic set draws several defects on one file), roc_pr.png (image level, all
    categories pooled) and overlays/<category>.png with ``num_overlays`` test images per category (anomalous ones
    first, then normal ones, on one colour scale). Returns the metrics summary.

    The summary's ``at_false_alarms`` holds the cuts on the image score an inspection line would pick:
    ``metrics.operating_points`` (at most 1, 5, 10 % of the normal images flagged) over the categories pooled, and
    per category when there are several; roc_pr.png marks the pooled ones. With ``flag_threshold`` > 0 an image is
    flagged when its score reaches it: a ``flagged`` column in scores.csv and its recall and false alarms in
    ``at_flag_threshold``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [source[int(i)] for i in predictions["indices"]]
    categories = [r.category or "all" for r in records]
    labels, scores, has_mask = predictions["labels"], predictions["scores"], predictions["has_mask"]
    pixel = bool(np.any(has_mask & (labels == 1)))  # some anomalous image is annotated
    metrics = anomaly_metrics_by_category(categories, labels, scores, masks=predictions["masks"] if pixel else None,
                                          maps=predictions["maps"] if pixel else None,
                                          has_mask=has_mask if pixel else None)
    names = sorted(set(categories))
    cuts = {"pooled": operating_points(labels, scores)}
    if len(names) > 1:
        in_category = np.array(categories)
        cuts["per_category"] = {c: operating_points(labels[in_category == c], scores[in_category == c]) for c in names}
    summary = {**metrics, "num_images": int(len(labels)), "num_unreadable": len(source) - int(len(labels)),
               "num_anomalous": int(labels.sum()), "at_false_alarms": cuts}
    flags = flag_column(scores, flag_threshold)
    if flags:
        summary["at_flag_threshold"] = flag_rates(scores, labels == 1, flag_threshold)
    (out_dir / "metrics.json").write_text(json.dumps(_json_safe(summary), indent=2) + "\n", encoding="utf-8")
    (out_dir / "metrics.md").write_text(metrics_table(summary), encoding="utf-8")
    with (out_dir / "scores.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "path", "category", "defect", "label", "score", *flags])
        for row, (index, record, category, label, score) in enumerate(zip(predictions["indices"], records, categories,
                                                                           labels, scores)):
            writer.writerow([int(index), record.path, category, record.defect, int(label), f"{score:.6g}",
                             *(int(v[row]) for v in flags.values())])
    pooled = (f"image level, the {len(names)} categories pooled (per category: metrics.md)" if len(names) > 1
              else f"image level, {names[0]}")
    points = None if None in cuts["pooled"].values() else cuts["pooled"]  # None: the test images are of one kind
    viz.save_roc_pr_curves(labels, scores, out_dir / "roc_pr.png", title=pooled, operating_points=points)
    annotated = {c for c, bad, m in zip(categories, labels, has_mask) if bad and m}
    for category, rows in overlay_rows(labels, categories, num_overlays).items():
        if len(rows):
            save_overlays(source, predictions, rows, out_dir / "overlays" / f"{_file_name(category)}.png",
                          with_masks=category in annotated)
    return summary


def write_folder_predictions(predictions: dict, source, out_dir, name: str, num_overlays: int = 16,
                             flag_threshold: float = 0.0) -> Path:
    """``predict_<name>.csv`` (path, score, and with ``flag_threshold`` > 0 ``flagged``: 1 where the score reaches
    it) in path order, an image skipped as unreadable with an empty row, and ``predict_<name>.png``, overlays of the
    ``num_overlays`` highest-scoring images; returns the CSV's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flags = flag_column(predictions["scores"], flag_threshold)
    out = out_dir / f"predict_{name}.csv"
    with out.open("w", newline="", encoding="utf-8") as f:  # csv quotes a path with a comma, as scores.csv does
        writer = csv.writer(f)
        writer.writerow(["path", "score", *flags])
        for record, r in rows_in_source_order(source, predictions["indices"]):
            if r is None:  # unreadable, skipped (data.skip_corrupt): an empty row, not a missing one
                writer.writerow([record.path] + [""] * (1 + len(flags)))
                continue
            writer.writerow([record.path, f"{predictions['scores'][r]:.6g}", *(int(v[r]) for v in flags.values())])
    top = np.argsort(-predictions["scores"], kind="stable")[:num_overlays]
    save_overlays(source, predictions, top, out_dir / f"predict_{name}.png", with_masks=False, labelled=False)
    return out


def format_report(summary: dict) -> str:
    """A per-category table for the terminal, metrics in percent ("–": no pixel annotations)."""
    width = max(12, *(display_width(name) + 2 for name in summary["per_category"]))
    lines = [left_justified("category", width) + "".join(f"{header:>9}" for _, header in COLUMNS)]
    rows = [*summary["per_category"].items(), ("mean", summary["mean"])]
    lines += [left_justified(name, width) + "".join(f"{_percent(m, key):>9}" for key, _ in COLUMNS)
              for name, m in rows]
    unreadable = f"; {summary['num_unreadable']} unreadable, skipped" if summary["num_unreadable"] else ""
    lines.append(f"{summary['num_images']} test images ({summary['num_anomalous']} anomalous){unreadable}")
    lines += operating_point_lines(summary["at_false_alarms"]["pooled"], summary.get("at_flag_threshold"), "score",
                                   ".6g")
    cuts = [f"{name} {m['p_f1max_threshold']:.6g}" for name, m in summary["per_category"].items()
            if "p_f1max_threshold" in m]
    if cuts:
        shown = ", ".join(cuts[:4]) + (f" and {len(cuts) - 4} more" if len(cuts) > 4 else "")
        lines.append(f"defect regions, cut at pixel F1-max: map >= {shown} (p_f1max_threshold in metrics.json)")
    return "\n".join(lines)
