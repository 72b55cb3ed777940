"""Classification task family (MemoryMamba, the ResNet baseline): train state, class weights, jitted train/eval
steps, evaluation outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ssm_jax import viz
from ssm_jax.losses import NCE_SIMILARITIES, memorymamba_loss
from ssm_jax.metrics import (auroc, average_precision, binary_metrics, classification_metrics, display_width,
                             flag_column, flag_rates, left_justified, operating_point_lines, operating_points)
from ssm_jax.training.accumulate import check_grad_accum_steps, mean_over_micro_batches
from ssm_jax.training.ema import eval_params
from ssm_jax.training.gather import gather_predictions, rows_in_source_order
from ssm_jax.training.mesh import jit_predict, jit_train_step
from ssm_jax.training.pretrained_encoder import read_encoder_weights, with_encoder
from ssm_jax.training import init_from as init_lib
from ssm_jax.training import state as state_lib
from ssm_jax.training import mixing as mixing_lib
from ssm_jax.training import tta as tta_lib
from ssm_jax.training.state import TrainState


MIXING_STREAM = 1  # fold_in index of the mixing draws within a step's key


def create_state(model, tx, rng, image_size: int, mesh, init_from: str = "", init_exclude=("head",),
                 encoder_weights: str = "") -> TrainState:
    """Initialise parameters on one sample image, then put in a torchvision/timm checkpoint of the model's ResNet
    backbone (``encoder_weights``: the ResNet classifier's ``encoder``; read first, so a bad path fails fast) and/or
    the matching parameters of run ``init_from`` (``training.init_from``), and replicate the state over the mesh."""
    from_run = init_lib.preparer(init_from, init_exclude)
    if not encoder_weights:
        return state_lib.create_state(model, tx, rng, image_size, mesh, prepare=from_run)
    encoder = read_encoder_weights(model.arch, encoder_weights)
    where = f"{model.arch} checkpoint {encoder_weights}"
    return state_lib.create_state(model, tx, rng, image_size, mesh,
                                  prepare=lambda variables: from_run(with_encoder(variables, encoder, where)))


def resolve_class_weights(spec, labels, num_classes: int) -> np.ndarray | None:
    """Cross-entropy class weights (K,) from ``config.loss.class_weights``: None for "none"; for "balanced"
    N / (K n_k) from the training labels (scikit-learn's "balanced": the mean weight over the training images is 1);
    else explicit positive weights, a sequence or a string "w0,w1,..." (what a ``--config`` override gives)."""
    if isinstance(spec, str) and spec in ("none", "balanced"):
        if spec == "none":
            return None
        counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
        if len(counts) != num_classes or counts.min() == 0:
            raise ValueError(f"loss.class_weights='balanced' needs every one of the {num_classes} classes in the "
                             f"training split; its class counts are {counts.tolist()}")
        return (counts.sum() / (num_classes * counts)).astype(np.float32)
    try:
        weights = np.array([float(w) for w in (spec.strip("()[] ").split(",") if isinstance(spec, str) else spec)])
    except (TypeError, ValueError):
        weights = None
    if weights is None or weights.shape != (num_classes,) or not np.all(np.isfinite(weights) & (weights > 0)):
        raise ValueError(f"loss.class_weights={spec!r}; expected 'none', 'balanced' or {num_classes} positive "
                         f"weights such as '{','.join(['1.0'] * num_classes)}'")
    return weights.astype(np.float32)


def predict_kwargs(config) -> dict:
    """``make_predict_step``'s arguments from the config: the test-time augmentation, with a warning when its views
    include transforms the training never applied (then they are new inputs to the model, not augmentations)."""
    tta, data = config.eval.tta, config.data
    flips, rot90 = set(data.flips), bool(data.rot90)
    mirrors_seen = bool(flips) if rot90 else {"horizontal", "vertical"} <= flips  # with rotations one mirror gives all
    unseen = []
    if tta in ("flips", "d4") and not mirrors_seen:
        unseen.append(f"mirrors (config.data.flips={tuple(data.flips)})")
    if tta == "d4" and not rot90:
        unseen.append("90-degree rotations (config.data.rot90=False)")
    if unseen and jax.process_index() == 0:
        print(f"warning: config.eval.tta={tta!r} averages over {' and '.join(unseen)}, which training did not "
              f"apply; the views are new inputs to the model, not augmentations it learned", flush=True)
    return {"tta": tta}


def eval_dir_name(config) -> str:
    """Where evaluation writes under the workdir: ``eval``, or ``eval_tta_<mode>`` with test-time augmentation, so
    a run evaluated both ways keeps both."""
    return "eval" if config.eval.tta == "none" else f"eval_tta_{config.eval.tta}"


def step_kwargs(config, train_source) -> dict:
    """``make_train_step``'s arguments beyond ``config.loss``: the class weights, which depend on the training set,
    and ``config.optim.sam_rho``."""
    weights = resolve_class_weights(config.loss.class_weights, train_source.labels, config.model.num_classes)
    return {"class_weights": weights, "sam_rho": config.optim.sam_rho}


def sam_point(params, grads, rho: float):
    """``params + rho g / |g|`` (global norm over the tree): SAM's worst point within ``rho``, to first order."""
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)))
    scale = rho / (norm + 1e-12)
    return jax.tree.map(lambda p, g: p + (scale * g).astype(p.dtype), params, grads)


def make_train_step(loss_config, mesh, grad_accum_steps: int = 1, class_weights: np.ndarray | None = None,
                    sam_rho: float = 0.0):
    """``(state, batch) -> (state, metrics)``, jitted with the batch sharded and the state replicated.

    ``loss_config.label_smoothing``, ``loss_config.ordinal`` (soft ordinal labels, ``losses.cross_entropy``) and
    ``class_weights`` (K,) (``resolve_class_weights``; None: unweighted) shape the cross-entropy term;
    ``loss_config.mixup_alpha`` / ``cutmix_alpha`` > 0 mix the images and that term's labels (``training.mixing``;
    the memory terms and the logged accuracy take each image's dominant label).

    With ``grad_accum_steps`` = k > 1 the batch is taken as k micro-batches in turn (``training.accumulate``) and
    their mean gradient makes one optimizer update. Cross-entropy is a mean over images, so then the step equals
    the big-batch step. The memory losses are batch statistics (eq. 23: class means of the coarse queries; eq. 24:
    the other images as negatives), and each micro-batch computes them over its own batch / k images (as each GPU of a
    PyTorch DDP job does over its local batch); with ``lambda_c`` or ``lambda_f`` > 0 the gradient is then the mean
    of the micro-batches' gradients, close to but not equal to the big-batch one. Metrics are micro-batch means.

    A model with batch normalisation (the ResNet classifier) normalises over the batch it sees and updates its
    running statistics each step; with accumulation they move by the mean of the micro-batches' updates, one
    moving-average step per optimizer step.

    With ``sam_rho`` > 0 (sharpness-aware minimisation) the gradient is taken again at ``sam_point``, on the same images
    and dropout draws, and that one makes the update (per micro-batch with accumulation); the logged loss and accuracy,
    and the running statistics, are the first pass's, at the parameters themselves.
    """

    def grads_and_metrics(state: TrainState, batch, rng):
        images, labels, ce_mix = batch["image"], batch["label"], None
        if mixing:  # its own stream: dropout draws what it drew before mixing existed
            mixed = mixing_lib.mix_batch(jax.random.fold_in(rng, MIXING_STREAM), images, labels,
                                         loss_config.mixup_alpha, loss_config.cutmix_alpha)
            images, ce_mix = mixed.images, (labels, mixed.partner, mixed.lam)
            labels = mixing_lib.dominant_labels(labels, mixed)

        def loss_fn(params):
            # updates: new running statistics of a model with batch norm; empty for MemoryMamba
            outputs, updates = state.apply_fn({"params": params, **state.model_state}, images, train=True,
                                              rngs={"dropout": rng}, mutable=["batch_stats"])
            total, parts = memorymamba_loss(outputs, labels, lambda_c=loss_config.lambda_c,
                                            lambda_f=loss_config.lambda_f, margin=loss_config.margin,
                                            temperature=loss_config.temperature,
                                            label_smoothing=loss_config.label_smoothing,
                                            class_weights=class_weights, ordinal=loss_config.ordinal, ce_mix=ce_mix,
                                            nce_similarity=nce_similarity)
            return total, (outputs["logits"], parts, updates)

        (loss, (logits, parts, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        if sam_rho > 0:
            grads = jax.grad(lambda p: loss_fn(p)[0])(sam_point(state.params, grads, sam_rho))
        acc = jnp.mean(jnp.argmax(logits, -1) == labels)
        return grads, {"loss": loss, "acc": acc, **{f"loss_{k}": v for k, v in parts.items() if k != "total"}}, updates

    def step(state: TrainState, batch):
        grads, metrics, updates = mean_over_micro_batches(
            lambda micro, rng: grads_and_metrics(state, micro, rng), batch, state.step_rng(), grad_accum_steps, mesh)
        return state.apply_gradients_and_updates(grads, updates), metrics

    check_grad_accum_steps(grad_accum_steps)
    mixing_lib.check_alphas(loss_config.mixup_alpha, loss_config.cutmix_alpha)
    if not sam_rho >= 0:
        raise ValueError(f"config.optim.sam_rho={sam_rho}; expected a value >= 0 (0: off; the radius of "
                         f"sharpness-aware minimisation's step otherwise, e.g. 0.05)")
    mixing = loss_config.mixup_alpha > 0 or loss_config.cutmix_alpha > 0
    if not 0 <= loss_config.label_smoothing < 1:
        raise ValueError(f"loss.label_smoothing={loss_config.label_smoothing}; expected a value in [0, 1) (0: off)")
    if not loss_config.ordinal >= 0:
        raise ValueError(f"loss.ordinal={loss_config.ordinal}; expected a value >= 0 (0: off; soft ordinal labels "
                         f"exp(-ordinal (k - y)^2) otherwise)")
    nce_similarity = loss_config.get("nce_similarity", "cos")  # configs written before the field was added
    if nce_similarity not in NCE_SIMILARITIES:
        raise ValueError(f"loss.nce_similarity={nce_similarity!r}; expected one of {', '.join(NCE_SIMILARITIES)} "
                         f"(InfoNCE's similarity, eq. 24)")
    return jit_train_step(mesh, step)


def make_predict_step(mesh, tta: str = "none"):
    """``(state, images) -> {"probs": class probabilities}``, jitted with images and outputs sharded along ``data``;
    with ``tta`` other than "none", the probabilities averaged over its views of each image (``training.tta``)."""
    tta_lib.check_mode(tta)

    def predict(state: TrainState, images):
        def logits(view):
            return state.apply_fn({"params": eval_params(state), **state.model_state}, view, train=False)["logits"]

        return {"probs": tta_lib.mean_probs(logits, images, tta)}

    return jit_predict(mesh, predict)


def predict_dataset(state, predict_step, batches, *, num_examples: int, local_batch: int, mesh,
                    example: Callable[[], dict] | None = None) -> dict:
    """Class probabilities ``probs``, ``labels`` and source ``indices`` of every example, from all processes."""
    return gather_predictions(state, predict_step, batches, num_examples=num_examples, local_batch=local_batch,
                              mesh=mesh, example=example,
                              keep=lambda batch: {"labels": batch["label"], "indices": batch["index"]})


MISTAKES_SHOWN = 16  # images in mistakes.png
FOLDER_SHOWN = 16  # images in predict_<name>.png
LISTED_CLASSES, LOWEST_LISTED = 50, 10  # the terminal's per-class table: all classes up to 50, else the 10 worst


def _group_probability(probs, binary_from: int) -> np.ndarray:
    """p(classes ``binary_from``..) per image: the score of the two-group task, ranked and cut below."""
    return np.asarray(probs, np.float64)[:, binary_from:].sum(-1)


def _two_groups(labels, probs, binary_from: int):
    """(positive 0/1 per image, its score ``_group_probability``, whether both groups are present so that a ranking
    of the score is defined)."""
    positive = (np.asarray(labels) >= binary_from).astype(np.int64)
    return positive, _group_probability(probs, binary_from), np.unique(positive).size == 2


def group_flag_column(probs, binary_from: int, threshold: float) -> dict:
    """``metrics.flag_column`` of the probability of classes ``binary_from``.."""
    return flag_column(_group_probability(probs, binary_from), threshold)


def write_evaluation(predictions: dict, source, out_dir, tta: str = "none", binary_from: int = 0,
                     flag_threshold: float = 0.0) -> dict:
    """Metrics JSON (with the ``tta`` it was predicted with; with ``binary_from`` > 0 also ``binary``, classes from that
    one on as the positive group: ``metrics.binary_metrics``, and AU-ROC, AP and the operating points at
    ``metrics.FALSE_ALARM_RATES`` of the positive group's summed probability, drawn in ``binary_roc_pr.png``; with
    ``flag_threshold`` > 0 also ``at_flag_threshold``, the rates of flagging at it; when the records name subsets,
    ``per_subset``), per-class report, confusion-matrix PNG, the most confident mistakes' images (``mistakes.png``)
    and per-image predictions CSV under ``out_dir`` (with a ``flagged`` column when ``flag_threshold`` > 0 and a
    ``subset`` column when the records name subsets)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(source.class_names)
    pred = predictions["probs"].argmax(-1)
    m = classification_metrics(predictions["labels"], pred, len(names))
    summary = {"acc": m["acc"], "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
               "num_images": int(len(pred)), "num_unreadable": len(source) - int(len(pred)), "tta": tta,
               "per_class": {name: {k: float(m["per_class"][k][i]) for k in ("precision", "recall", "f1", "support")}
                             for i, name in enumerate(names)},
               "confusion": m["confusion"].tolist(), "class_names": names}
    if binary_from:
        summary["binary"] = {"positive": names[binary_from:],
                             **binary_metrics(predictions["labels"], pred, len(names), binary_from),
                             **_binary_ranking(predictions, names, binary_from, out_dir / "binary_roc_pr.png")}
    subsets = np.array([source[int(i)].subset for i in predictions["indices"]])
    has_subsets = bool((subsets != "").any())
    if has_subsets:
        summary["per_subset"] = _per_subset(predictions, pred, subsets, names, binary_from)
    flags = group_flag_column(predictions["probs"], binary_from, flag_threshold)
    if binary_from and flags:
        positive = np.asarray(predictions["labels"]) >= binary_from
        summary["binary"]["at_flag_threshold"] = flag_rates(_group_probability(predictions["probs"], binary_from),
                                                            positive, flag_threshold)
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    viz.save_confusion_matrix(m["confusion"], names, out_dir / "confusion.png")
    _save_mistakes(predictions, source, out_dir / "mistakes.png")
    with (out_dir / "predictions.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        extra = {**flags, **({"subset": subsets} if has_subsets else {})}
        writer.writerow(["path", "label", "prediction", "confidence"] + [f"p_{n}" for n in names] + list(extra))
        for i, idx in enumerate(predictions["indices"]):
            row = predictions["probs"][i]
            writer.writerow([source[int(idx)].path, names[predictions["labels"][i]], names[pred[i]],
                             f"{row.max():.4f}"] + [f"{p:.4f}" for p in row] + [v[i] for v in extra.values()])
    return summary


def _per_subset(predictions: dict, pred, subsets, names: list, binary_from: int) -> dict:
    """{subset: {num_images, acc, f1, recall: {class: recall}, and with ``binary_from`` binary: {acc, auroc}}} for
    each subset the records name (ELPV's cell types), in sorted order; a class or group a subset lacks scores None."""
    labels, out = np.asarray(predictions["labels"]), {}
    for name in sorted(set(subsets) - {""}):
        keep = subsets == name
        m = classification_metrics(labels[keep], pred[keep], len(names))
        support = m["per_class"]["support"]
        entry = {"num_images": int(keep.sum()), "acc": m["acc"], "f1": m["f1"],
                 "recall": {n: float(m["per_class"]["recall"][i]) if support[i] else None
                            for i, n in enumerate(names)}}
        if binary_from:
            positive, score, both = _two_groups(labels[keep], predictions["probs"][keep], binary_from)
            entry["binary"] = {"acc": binary_metrics(labels[keep], pred[keep], len(names), binary_from)["acc"],
                               "auroc": auroc(positive, score) if both else None}
        out[name] = entry
    return out


def most_confident_mistakes(probs, labels, count: int) -> np.ndarray:
    """Positions of the wrongly predicted examples, the most confident first (ties: by position), at most
    ``count``: the errors most worth looking at, since the model was surest of them."""
    pred = np.asarray(probs).argmax(-1)
    wrong = np.flatnonzero(pred != np.asarray(labels))
    return wrong[np.argsort(-np.asarray(probs)[wrong, pred[wrong]], kind="stable")][:count]


def _save_mistakes(predictions: dict, source, path, count: int = MISTAKES_SHOWN):
    """The ``count`` most confident mistakes' images, titled file name, true -> predicted class and confidence;
    nothing when every prediction is right."""
    mistakes = most_confident_mistakes(predictions["probs"], predictions["labels"], count)
    if not mistakes.size:
        return
    names, probs = list(source.class_names), predictions["probs"]
    indices = [int(predictions["indices"][i]) for i in mistakes]
    kept, images = source.load_shown(indices, Path(path).name)
    titles = [f"{Path(source[indices[k]].path).name}\n{names[predictions['labels'][i]]} -> {names[probs[i].argmax()]} "
              f"({probs[i].max():.2f})" for k, i in zip(kept, mistakes[kept])]
    if images:
        viz.save_image_grid(images, titles, path)


def _binary_ranking(predictions: dict, names: list, binary_from: int, curves_path) -> dict:
    """How well the positive group's summed probability ranks its images above the rest, at every threshold rather
    than argmax's: {auroc, ap, at_false_alarms: {"5%": {threshold, recall, fpr}: the cut on that probability that
    catches the most of the positive group while flagging at most 5 % of the rest, ...}}, None when the test labels
    hold one group; the ROC (those points marked) and PR curves to ``curves_path``."""
    positive, score, both = _two_groups(predictions["labels"], predictions["probs"], binary_from)
    group, rest = " + ".join(names[binary_from:]), " + ".join(names[:binary_from])
    points = operating_points(positive, score)
    viz.save_roc_pr_curves(positive, score, curves_path, title=f"{group} against {rest}, scored by p({group})",
                           operating_points=points if both else None)
    return {"auroc": auroc(positive, score) if both else None,
            "ap": average_precision(positive, score) if both else None, "at_false_alarms": points}


def write_folder_predictions(predictions: dict, source, out_dir, name: str, binary_from: int = 0,
                             flag_threshold: float = 0.0) -> Path:
    """``predict_<name>.csv``: predicted class, confidence and every class probability per image, in path order;
    with ``flag_threshold`` > 0 also ``flagged``, 1 where classes ``binary_from``.. together reach it. An image
    skipped as unreadable has its row, empty but for the path. ``predict_<name>.png`` shows the images most worth a
    look (``folder_picks``) under their predictions; returns the CSV's path."""
    out = Path(out_dir) / f"predict_{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(source.class_names)
    flags = group_flag_column(predictions["probs"], binary_from, flag_threshold)
    header = ["path", "prediction", "confidence"] + [f"p_{n}" for n in names] + list(flags)
    with out.open("w", newline="", encoding="utf-8") as f:  # csv quotes a path with a comma, as predictions.csv does
        writer = csv.writer(f)
        writer.writerow(header)
        for record, r in rows_in_source_order(source, predictions["indices"]):
            if r is None:  # unreadable, skipped (data.skip_corrupt): an empty row, not a missing one
                writer.writerow([record.path] + [""] * (len(header) - 1))
                continue
            row = predictions["probs"][r]
            writer.writerow([record.path, names[int(np.argmax(row))], f"{row.max():.4f}"] + [f"{p:.4f}" for p in row]
                            + [str(v[r]) for v in flags.values()])
    _save_folder_picks(predictions, source, names, binary_from, flags, out.with_suffix(".png"))
    return out


def folder_picks(probs, binary_from: int, count: int) -> np.ndarray:
    """Positions of the ``count`` predictions most worth a look: with two groups (``binary_from`` > 0) the highest
    p(classes ``binary_from``..), the likeliest defects, as an anomaly detector's folder shows its highest scores;
    otherwise the least confident, where the model is least sure (ties: by position)."""
    probs = np.asarray(probs, np.float64)
    key = -_group_probability(probs, binary_from) if binary_from > 0 else probs.max(-1)
    return np.argsort(key, kind="stable")[:count]


def _save_folder_picks(predictions: dict, source, names: list, binary_from: int, flags: dict, path,
                       count: int = FOLDER_SHOWN):
    """``folder_picks``' images (``Source.load_shown``), titled file name, predicted class and confidence (with two
    groups also the group's probability, and "flagged" where ``flags`` says so)."""
    probs = predictions["probs"]
    picks = folder_picks(probs, binary_from, count)
    indices = [int(predictions["indices"][r]) for r in picks]
    kept, images = source.load_shown(indices, path.name)
    group = " + ".join(names[binary_from:])
    titles = []
    for k, r in zip(kept, picks[kept]):
        title = f"{Path(source[indices[k]].path).name}\n{names[probs[r].argmax()]} ({probs[r].max():.2f})"
        if binary_from > 0:
            title += f"\np({group}) {probs[r, binary_from:].sum():.2f}"
        if flags and flags["flagged"][r]:
            title += ", flagged"
        titles.append(title)
    if images:
        viz.save_image_grid(images, titles, path)


def format_report(summary: dict) -> str:
    """A per-class table for the terminal; past ``LISTED_CLASSES`` classes (a 1,000-class pretraining) only the
    ``LOWEST_LISTED`` with the lowest F1, the rest being in metrics.json."""
    rows = list(summary["per_class"].items())
    if len(rows) > LISTED_CLASSES:
        rows = sorted(rows, key=lambda row: row[1]["f1"])[:LOWEST_LISTED]
    width = max(24, *(display_width(name) + 2 for name, _ in rows))
    lines = [f"{left_justified('class', width)}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    if len(rows) < len(summary["per_class"]):
        lines.append(f"(the {len(rows)} of {len(summary['per_class'])} classes with the lowest f1; all of them in "
                     f"metrics.json)")
    for name, r in rows:
        lines.append(f"{left_justified(name, width)}{r['precision']:>10.4f}{r['recall']:>10.4f}{r['f1']:>10.4f}"
                     f"{int(r['support']):>9}")
    lines.append(f"{left_justified('macro', width)}{summary['precision']:>10.4f}{summary['recall']:>10.4f}"
                 f"{summary['f1']:>10.4f}{summary['num_images']:>9}")
    unreadable = f" ({summary['num_unreadable']} unreadable, skipped)" if summary.get("num_unreadable") else ""
    lines.append(f"accuracy {summary['acc']:.4f} on {summary['num_images']} test images{unreadable}")
    if "binary" in summary:
        b = summary["binary"]
        ranking = "" if b["auroc"] is None else f"; AU-ROC {b['auroc']:.4f}, AP {b['ap']:.4f}"
        lines.append(f"2 groups, positive = {', '.join(b['positive'])} ({b['num_positive']} images): accuracy "
                     f"{b['acc']:.4f}, precision {b['precision']:.4f}, recall {b['recall']:.4f}, f1 {b['f1']:.4f}"
                     f"{ranking}")
        lines += operating_point_lines(b["at_false_alarms"], b.get("at_flag_threshold"),
                                       f"p({' + '.join(b['positive'])})")
    for name, sub in summary.get("per_subset", {}).items():
        recall = " / ".join("-" if r is None else f"{r:.4f}" for r in sub["recall"].values())
        two = ""
        if "binary" in sub:
            auc = sub["binary"]["auroc"]
            two = f"; 2 groups {sub['binary']['acc']:.4f}" + ("" if auc is None else f", AU-ROC {auc:.4f}")
        lines.append(f"subset {name} ({sub['num_images']} images): accuracy {sub['acc']:.4f}, f1 {sub['f1']:.4f}, "
                     f"recall {recall}{two}")
    return "\n".join(lines)
