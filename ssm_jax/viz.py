"""Pictures of evaluation results as PNG files: confusion matrix, ROC/PR curves, a titled image grid (a
classifier's mistakes), anomaly overlays, masked-image reconstructions, training curves.

Drawn on matplotlib ``Figure`` objects with the Agg renderer (no pyplot state, no display needed). Sizes are
fixed in inches at ``DPI``, so a picture's pixel size depends only on what it shows (documented per function).
Each function creates the parent folder and returns the path written.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import font_manager, ft2font
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from ssm_jax.metrics.curves import auroc, average_precision, precision_recall_curve, roc_curve

DPI = 100
MAX_INCHES = 30  # a confusion matrix's side grows half an inch a class up to this (60 classes)
MAX_NAMED = 60  # classes named on its axes; beyond, the ticks are the matrix indices


_CHARMAPS: dict[tuple, frozenset] = {}  # (font file, face in a collection) -> the code points it draws
_WARNED_GLYPHS = set()  # the warning of characters no installed font has, once per process


def _charmap(font_file: str, face: int = 0) -> frozenset:
    if (font_file, face) not in _CHARMAPS:
        try:
            _CHARMAPS[font_file, face] = frozenset(ft2font.FT2Font(font_file, face_index=face).get_charmap())
        except (OSError, RuntimeError):  # a font file FreeType cannot read
            _CHARMAPS[font_file, face] = frozenset()
    return _CHARMAPS[font_file, face]


def _fallback_fonts(fig) -> bool:
    """Gives each text of ``fig`` that its font cannot draw (file and class names in Chinese, Japanese, Korean, ...)
    the installed fonts that have its characters, after its own (matplotlib's glyph-by-glyph fallback). What no
    installed font has is named once per process, instead of matplotlib's warning per glyph and drawing; returns
    whether there is any."""
    undrawable, regular_first = False, None
    for text in fig.findobj(Text):
        content = text.get_text()
        if content.isascii():
            continue
        if regular_first is None:  # once a figure, and only for one with text outside ASCII
            fonts = [f for f in font_manager.fontManager.ttflist if not f.name.startswith("Last Resort")]  # all boxes
            regular_first = sorted(fonts, key=lambda f: (f.style != "normal", f.weight != 400))
        own = font_manager.findfont(text.get_fontproperties())
        drawn = _charmap(own, getattr(own, "face_index", 0))
        left = {c: None for c in content if not c.isspace() and ord(c) not in drawn}  # in order of appearance
        families = []
        for font in regular_first:
            if not left:
                break
            covered = [c for c in left if ord(c) in _charmap(font.fname, font.index)]
            if covered:
                families.append(font.name)
                for c in covered:
                    del left[c]
        if families:
            text.set_fontfamily([*text.get_fontfamily(), *dict.fromkeys(families)])
        undrawable = undrawable or bool(left)
        if left and "glyphs" not in _WARNED_GLYPHS:
            _WARNED_GLYPHS.add("glyphs")
            warnings.warn(f"no installed font has the characters {''.join(left)!r} of {content!r}: "
                          f"pictures draw them as boxes; install a font that has them (e.g. Noto Sans CJK for "
                          f"Chinese, Japanese and Korean names), then delete matplotlib's font list "
                          f"({matplotlib.get_cachedir()}/fontlist-*.json) so that it finds the font", stacklevel=4)
    return undrawable


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    undrawable = _fallback_fonts(fig)
    with warnings.catch_warnings():
        if undrawable:  # said once in _fallback_fonts
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        fig.savefig(path, format="png")
    return path


def _note(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()


def save_confusion_matrix(confusion, class_names, path, normalize=False):
    """Confusion matrix (rows true, columns predicted) with per-cell values; ``normalize`` divides each row by
    its total (recall on the diagonal). Size (4 + K/2) x (3 + K/2) inches for K classes, at most ``MAX_INCHES``; the
    values are written for up to 30 classes, the names for up to ``MAX_NAMED`` (e.g. a 1,000-class pretraining)."""
    confusion = np.asarray(confusion)
    k = confusion.shape[0]
    if confusion.shape != (k, k) or k == 0:
        raise ValueError(f"confusion must be a non-empty square matrix, got shape {confusion.shape}")
    if len(class_names) != k:
        raise ValueError(f"class_names must have {k} entries, one per row of confusion, got {len(class_names)}")
    values = confusion.astype(np.float64)
    if normalize:
        totals = values.sum(axis=1, keepdims=True)
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
    side = min(k / 2, MAX_INCHES)
    fig = Figure(figsize=(4 + side, 3 + side), dpi=DPI, layout="tight")  # constrained clips the colorbar here
    ax = fig.add_subplot()
    top = max(values.max(), 1e-12)
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
    fig.colorbar(image, ax=ax, ticks=None if normalize else MaxNLocator(integer=True))  # counts: no 0.5 of an image
    if k <= MAX_NAMED:
        ticks = np.arange(k)
        ax.set_xticks(ticks, [str(name) for name in class_names], rotation=45, ha="right")
        ax.set_yticks(ticks, [str(name) for name in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        for (i, j), value in np.ndenumerate(values):
            text = f"{value:.2f}" if normalize else f"{int(confusion[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if value > top / 2 else "black")
    return _save(fig, path)


def save_roc_pr_curves(labels, scores, path, title=None, operating_points=None):
    """ROC (left) and precision-recall (right) curves of binary scores, AU-ROC and AP in the legends, ``title`` (what is
    positive) above both, and on the ROC a dot at each of ``operating_points`` ({label: {fpr, recall}}, as
    ``metrics.operating_point`` gives them) labelled with its label and recall; a note instead of curves when labels
    hold one class. 10 x 4.5 inches."""
    labels = np.asarray(labels).ravel()
    fig = Figure(figsize=(10, 4.5), dpi=DPI, layout="constrained")
    if title:
        fig.suptitle(title)
    roc_ax, pr_ax = fig.subplots(1, 2)
    if np.unique(labels).size < 2:
        _note(roc_ax, "ROC undefined: labels contain one class")
        _note(pr_ax, "PR undefined: labels contain one class")
        return _save(fig, path)
    fpr, tpr, _ = roc_curve(labels, scores)
    roc_ax.plot(fpr, tpr, label=f"AU-ROC = {auroc(labels, scores):.4f}")
    roc_ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    shared: dict[tuple, list[str]] = {}  # cuts at one point (a small test split's 1 % and 5 %) get one label
    for name, point in (operating_points or {}).items():
        shared.setdefault((point["fpr"], point["recall"]), []).append(str(name))
    for i, (xy, names) in enumerate(shared.items()):
        roc_ax.plot(*xy, "o", color="C3", markersize=4, label=None if i else "allowed false-positive rate: recall")
        roc_ax.annotate(f"{', '.join(names)}: {100 * xy[1]:.1f} %", xy, xytext=(6, -10 - 10 * i),  # staggered: near
                        textcoords="offset points", fontsize=8, color="C3")  # points' labels do not overprint
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    precision, recall, _ = precision_recall_curve(labels, scores)
    pr_ax.plot(np.append(0, recall), np.append(precision[0], precision), drawstyle="steps-pre",
               label=f"AP = {average_precision(labels, scores):.4f}")
    pr_ax.axhline(labels.mean(), color="k", linestyle="--", linewidth=0.8)
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    roc_ax.legend(loc="lower right")
    pr_ax.legend(loc="lower left")
    return _save(fig, path)


def save_image_grid(images, titles, path, columns=4):
    """Images (each (H, W, 3) uint8, any sizes) in rows of ``columns``, each under its title. Size 2.6 x 2.9 inches
    per image, ``columns`` wide (fewer when there are fewer images)."""
    if not images or len(images) != len(titles):
        raise ValueError(f"need one title per image and at least one image, got {len(images)} images and "
                         f"{len(titles)} titles")
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    fig = Figure(figsize=(2.6 * columns, 2.9 * rows), dpi=DPI, layout="constrained")
    for ax in fig.subplots(rows, columns, squeeze=False).ravel():
        ax.set_axis_off()
    for ax, image, title in zip(fig.axes, images, titles):
        ax.imshow(image)
        ax.set_title(title, fontsize=8)
    return _save(fig, path)


def _as_rgb(images):
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (N, H, W), (N, H, W, 1) or (N, H, W, 3), got {images.shape}")
    images = images / 255.0 if images.dtype == np.uint8 else np.clip(images.astype(np.float64), 0, 1)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights: an RGB image's gray under the anomaly map
_MASK_FILL = ListedColormap(["lime"])


def save_anomaly_overlays(images, maps, path, masks=None, scores=None, max_images=8, alpha=0.5, titles=None,
                          mask_title="ground truth"):
    """One row per image (the first ``max_images``): image | anomaly map over its gray | the masks, filled and
    outlined, titled ``mask_title`` (with masks: the ground truth, or defect regions cut from the maps; a list titles
    each image's own, e.g. to tell a defective part annotated at image level only from a good one). Maps share one
    colour scale, the map's own values (an image's score may pool them: SNARM averages 16 x 16 windows first).
    Images NHWC in [0, 1] or uint8; maps and masks (N, H, W); ``titles`` name each image (default "image i"). Size 3
    inches per panel: (3 x columns) x (3 x rows)."""
    images = _as_rgb(images)
    maps = np.asarray(maps, dtype=np.float64)
    if images.shape[0] == 0:
        raise ValueError("images is empty")
    if maps.shape != images.shape[:3]:
        raise ValueError(f"maps must have shape (N, H, W) = {images.shape[:3]} like images, got {maps.shape}")
    if masks is not None and np.shape(masks) != maps.shape:
        raise ValueError(f"masks must have the shape of maps {maps.shape}, got {np.shape(masks)}")
    if scores is not None and np.shape(scores) != maps.shape[:1]:
        raise ValueError(f"scores must have shape ({maps.shape[0]},), got {np.shape(scores)}")
    if titles is not None and len(titles) != maps.shape[0]:
        raise ValueError(f"need one title per image ({maps.shape[0]}), got {len(titles)}")
    mask_titles = [mask_title] * maps.shape[0] if isinstance(mask_title, str) else list(mask_title)
    if len(mask_titles) != maps.shape[0]:
        raise ValueError(f"need one mask title per image ({maps.shape[0]}) or one for all, got {len(mask_titles)}")
    rows, cols = min(images.shape[0], max_images), 2 if masks is None else 3
    low, high = maps[:rows].min(), maps[:rows].max()
    high = high if high > low else low + 1.0
    fig = Figure(figsize=(3 * cols, 3 * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(rows):
        axes[i, 0].imshow(images[i])
        name = f"image {i}" if titles is None else titles[i]
        axes[i, 0].set_title(name + ("" if scores is None else f"\nimage score {float(scores[i]):.3g}"), fontsize=8)
        # The map over the image's luminance: over its colours the blend would take hues the colour bar lacks.
        axes[i, 1].imshow(images[i] @ _LUMA, cmap="gray", vmin=0, vmax=1)
        heat = axes[i, 1].imshow(maps[i], cmap="jet", alpha=alpha, vmin=low, vmax=high)
        axes[i, 1].set_title("anomaly map")
        if masks is not None:
            mask = np.asarray(masks[i]) > 0
            axes[i, 2].imshow(images[i])
            # Filled, so a mask over most of the image (or all of it) reads as the region, not as its holes' outline.
            axes[i, 2].imshow(np.ma.masked_where(~mask, mask), cmap=_MASK_FILL, alpha=0.35, vmin=0, vmax=1)
            if mask.any() and not mask.all():
                axes[i, 2].contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=1.5)
            axes[i, 2].set_title(mask_titles[i])
        for ax in axes[i]:
            ax.set_axis_off()
    fig.colorbar(heat, ax=axes.ravel().tolist(), shrink=0.6, label="anomaly map value")
    return _save(fig, path)


def save_masked_reconstructions(images, masks, reconstructions, path, errors=None, max_images=8):
    """One row per image (the first ``max_images``): image | the hidden patches greyed | the reconstruction pasted
    into the hidden patches (the visible pixels kept). Images and reconstructions NHWC in [0, 1] or uint8, masks
    (N, H, W) in [0, 1] (1: hidden); ``errors`` (N,) titles the last panel. Size 3 inches per panel."""
    images, reconstructions = _as_rgb(images), _as_rgb(reconstructions)
    hidden = np.clip(np.asarray(masks, np.float64), 0, 1)
    if images.shape[0] == 0:
        raise ValueError("images is empty")
    if reconstructions.shape != images.shape or hidden.shape != images.shape[:3]:
        raise ValueError(f"reconstructions {reconstructions.shape} and masks {hidden.shape} must match images "
                         f"{images.shape} (masks without the channel axis)")
    rows = min(images.shape[0], max_images)
    fig = Figure(figsize=(9, 3 * rows), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False)
    for i in range(rows):
        h = hidden[i][..., None]
        panels = (images[i], images[i] * (1 - h) + 0.5 * h, images[i] * (1 - h) + reconstructions[i] * h)
        titles = (f"image {i}", "hidden patches",
                  "filled in" + ("" if errors is None else f"  L1 {float(errors[i]):.3f}"))
        for ax, panel, title in zip(axes[i], panels, titles):
            ax.imshow(panel)
            ax.set_title(title)
            ax.set_axis_off()
    return _save(fig, path)


def save_training_curves(metrics_jsonl_path, path):
    """Loss (left) and accuracy (right) against step from a metrics.jsonl log: every numeric key whose name
    contains "loss" or "acc", each from the lines that have it; "step" is the x axis (line index if absent).
    Size 5.5 x 4 inches per panel drawn (one panel with a note when neither kind is logged)."""
    series = {}
    lines = Path(metrics_jsonl_path).read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(filter(str.strip, lines)):
        record = json.loads(line)
        step = record.get("step", index)
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, ([], []))
                series[key][0].append(step)
                series[key][1].append(value)
    panels = [(kind, [key for key in series if kind in key.lower()]) for kind in ("loss", "acc")]
    panels = [(kind, keys) for kind, keys in panels if keys]
    fig = Figure(figsize=(5.5 * max(len(panels), 1), 4), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    if not panels:
        _note(axes[0], f"no loss or accuracy entries in {Path(metrics_jsonl_path).name}")
    for ax, (kind, keys) in zip(axes, panels):
        for key in keys:
            steps, values = series[key]
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
        ax.set(xlabel="step", ylabel="loss" if kind == "loss" else "accuracy on training batches")
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)
