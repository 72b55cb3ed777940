"""Pictures are written as valid PNGs of the documented sizes, also for degenerate inputs."""

import json
import warnings

import matplotlib.axes
import numpy as np
import pytest
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from ssm_jax import viz

save = Figure.savefig


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


@pytest.mark.parametrize("k, normalize", [(1, False), (3, True), (10, False)])
def test_confusion_matrix(tmp_path, k, normalize):
    confusion = np.random.default_rng(k).integers(0, 20, (k, k))
    confusion[-1] = 0  # a class with no samples: normalised row stays 0
    path = viz.save_confusion_matrix(confusion, [f"class {i}" for i in range(k)], tmp_path / "sub" / "cm.png",
                                     normalize=normalize)
    assert _png_size(path) == ((4 + k / 2) * viz.DPI, (3 + k / 2) * viz.DPI)


def test_confusion_matrix_of_many_classes_keeps_its_size_bounded(tmp_path):
    """1,000 classes (a fractal pretraining's) would otherwise make a 504-inch figure, 50,400 pixels a side."""
    k = 1000
    confusion = np.random.default_rng(0).integers(0, 3, (k, k))
    path = viz.save_confusion_matrix(confusion, [f"ifs_{i:04d}" for i in range(k)], tmp_path / "cm.png")
    assert _png_size(path) == ((4 + viz.MAX_INCHES) * viz.DPI, (3 + viz.MAX_INCHES) * viz.DPI)


def test_confusion_matrix_checks_names(tmp_path):
    with pytest.raises(ValueError, match="class_names must have 2 entries"):
        viz.save_confusion_matrix(np.eye(2), ["a"], tmp_path / "cm.png")


@pytest.mark.parametrize("labels", [[0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]])
def test_roc_pr_curves(tmp_path, labels):
    path = viz.save_roc_pr_curves(labels, [0.1, 0.9, 0.5, 0.5, 0.3, 0.2], tmp_path / "curves.png")
    assert _png_size(path) == (1000, 450)


def test_roc_pr_curves_title_is_drawn(tmp_path):
    from PIL import Image
    args = [0, 1, 1, 0], [0.1, 0.9, 0.5, 0.3]
    plain = np.asarray(Image.open(viz.save_roc_pr_curves(*args, tmp_path / "plain.png")).convert("L"))
    titled = np.asarray(Image.open(viz.save_roc_pr_curves(*args, tmp_path / "t.png", title="defective")).convert("L"))
    centre_top = np.s_[:25, 440:560]  # between the two panels' own titles
    assert plain.shape == titled.shape and (titled[centre_top] < 128).any() and not (plain[centre_top] < 128).any()


def test_roc_marks_the_operating_points_in_red(tmp_path):
    from PIL import Image
    args = [0, 1, 1, 0, 1, 0, 0, 1], [0.1, 0.9, 0.5, 0.3, 0.7, 0.6, 0.2, 0.4]
    plain = np.asarray(Image.open(viz.save_roc_pr_curves(*args, tmp_path / "plain.png")).convert("RGB"), np.int64)
    point = {"25%": {"fpr": 0.25, "recall": 0.75}}
    marked = np.asarray(Image.open(viz.save_roc_pr_curves(*args, tmp_path / "m.png", operating_points=point))
                        .convert("RGB"), np.int64)
    red = lambda im: (im[..., 0] > 150) & (im[..., 1] < 100) & (im[..., 2] < 100)  # matplotlib's C3
    assert not red(plain).any() and red(marked)[:, :500].any() and not red(marked)[:, 500:].any()  # on the ROC alone


def test_image_grid(tmp_path):
    images = [np.zeros((8, 8, 3), np.uint8), np.full((6, 9, 3), 200, np.uint8), np.zeros((8, 8, 3), np.uint8)]
    path = viz.save_image_grid(images, ["a", "b", "c"], tmp_path / "grid.png", columns=2)
    assert _png_size(path) == (2 * 2.6 * viz.DPI, 2 * 2.9 * viz.DPI)
    assert _png_size(viz.save_image_grid(images[:1], ["a"], tmp_path / "one.png")) == (2.6 * viz.DPI, 2.9 * viz.DPI)
    with pytest.raises(ValueError, match="one title per image"):
        viz.save_image_grid(images, ["a"], tmp_path / "bad.png")


@pytest.mark.parametrize("with_masks", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_anomaly_overlays(tmp_path, with_masks, dtype):
    rng = np.random.default_rng(0)
    images = rng.random((5, 32, 40, 3))
    images = (images * 255).astype(np.uint8) if dtype == np.uint8 else images.astype(dtype)
    maps = rng.random((5, 32, 40))
    masks = np.zeros((5, 32, 40), dtype=bool) if with_masks else None
    if with_masks:
        masks[0, 5:15, 10:20] = True
        masks[1] = True  # all anomalous: no contour to draw
    path = viz.save_anomaly_overlays(images, maps, tmp_path / "overlays.png", masks=masks, scores=maps.max((1, 2)),
                                     max_images=3)
    assert _png_size(path) == ((3 if with_masks else 2) * 300, 3 * 300)


def test_anomaly_overlays_name_their_mask_column(tmp_path, monkeypatch):
    """Ground truth by default; defect regions cut from the maps when the caller says so."""
    titles = []
    set_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda ax, text, *a, **k: titles.append(text)
                        or set_title(ax, text, *a, **k))
    maps = np.random.default_rng(0).random((1, 16, 16))
    for mask_title in (None, "defect regions"):
        titles.clear()
        kwargs = {} if mask_title is None else {"mask_title": mask_title}
        viz.save_anomaly_overlays(np.zeros((1, 16, 16, 3)), maps, tmp_path / "o.png", masks=maps > 0.5, **kwargs)
        assert titles[-1] == (mask_title or "ground truth")
    titles.clear()
    viz.save_anomaly_overlays(np.zeros((2, 16, 16, 3)), np.repeat(maps, 2, 0), tmp_path / "o.png",
                              masks=np.zeros((2, 16, 16)), mask_title=["ground truth", "no mask"])
    assert titles[2] == "ground truth" and titles[5] == "no mask"
    with pytest.raises(ValueError, match=r"need one mask title per image \(2\) or one for all, got 1"):
        viz.save_anomaly_overlays(np.zeros((2, 16, 16, 3)), np.repeat(maps, 2, 0), tmp_path / "o.png",
                                  masks=np.zeros((2, 16, 16)), mask_title=["ground truth"])


def test_anomaly_overlays_degenerate(tmp_path):
    images = np.zeros((1, 16, 16, 1), dtype=np.float32)  # grayscale, all-zero maps and masks
    path = viz.save_anomaly_overlays(images, np.zeros((1, 16, 16)), tmp_path / "o.png", masks=np.zeros((1, 16, 16)))
    assert _png_size(path) == (900, 300)
    with pytest.raises(ValueError, match=r"maps must have shape \(N, H, W\) = \(1, 16, 16\)"):
        viz.save_anomaly_overlays(images, np.zeros((1, 8, 8)), tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"need one title per image \(1\), got 2"):
        viz.save_anomaly_overlays(images, np.zeros((1, 16, 16)), tmp_path / "bad.png", titles=["a", "b"])


def test_masked_reconstructions(tmp_path):
    rng = np.random.default_rng(1)
    images, reconstructions = rng.random((2, 5, 16, 16, 3))
    masks = np.zeros((5, 16, 16))
    masks[:, :8] = 1
    path = viz.save_masked_reconstructions(images, masks, reconstructions, tmp_path / "r.png", errors=rng.random(5),
                                           max_images=4)
    assert _png_size(path) == (900, 4 * 300)
    with pytest.raises(ValueError, match="must match images"):
        viz.save_masked_reconstructions(images, masks[:, :8], reconstructions, tmp_path / "bad.png")


def test_training_curves(tmp_path):
    log = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "train/loss": 1 / (s + 1), "train/acc": s / 10, "lr": 1e-4} for s in range(10)]
    lines.append({"step": 10, "eval/acc": 0.8, "eval/loss": 0.3})
    log.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert _png_size(viz.save_training_curves(log, tmp_path / "curves.png")) == (1100, 400)
    log.write_text(json.dumps({"step": 0, "lr": 1e-4}) + "\n")  # nothing to plot: a note
    assert _png_size(viz.save_training_curves(log, tmp_path / "none.png")) == (550, 400)


def test_names_in_other_scripts_are_drawn_with_installed_fonts_or_named_once(tmp_path, monkeypatch):
    """A character the default font lacks is drawn from an installed font that has it (matplotlib's own STIX fonts
    have U+24B6, DejaVu Sans does not), so matplotlib warns of no missing glyph; characters no installed font has
    (here, with only DejaVu Sans installed: Chinese) are named in one warning per process, not one per glyph and
    picture."""
    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kw: drawn.append(fig) or save(fig, *args, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        viz.save_confusion_matrix(np.eye(2), ["good", "\u24b6 scratch"], tmp_path / "cm.png")
        viz.save_image_grid([np.zeros((8, 8, 3), np.uint8)], ["\u24b6.png"], tmp_path / "grid.png")
    fallback = [t for fig in drawn for t in fig.findobj(Text) if "\u24b6" in t.get_text()]
    assert {t.get_text() for t in fallback} == {"\u24b6 scratch", "\u24b6.png"}  # tick labels, a title
    for text in fallback:  # its own family, then one that draws the character
        family = text.get_fontfamily()
        added = font_manager.findfont(font_manager.FontProperties(family=family[-1]), fallback_to_default=False)
        assert len(family) > 1 and ord("\u24b6") in viz._charmap(added, added.face_index)
    monkeypatch.setattr(viz, "_WARNED_GLYPHS", set())
    latin = ("DejaVu Sans", "Last Resort High-Efficiency")
    only_latin = [f for f in font_manager.fontManager.ttflist if f.name in latin]
    monkeypatch.setattr(font_manager.fontManager, "ttflist", only_latin)
    with pytest.warns(UserWarning, match=r"no installed font has the characters '划痕' .*Noto Sans CJK") as said:
        viz.save_confusion_matrix(np.eye(2), ["good", "划痕"], tmp_path / "cm_zh.png")
    assert len(said) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        viz.save_image_grid([np.zeros((8, 8, 3), np.uint8)], ["划痕/001.png"], tmp_path / "grid_zh.png")


def test_confusion_counts_have_whole_numbers_on_the_colour_bar(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(viz, "_save", lambda fig, path: figures.append(fig) or path)
    viz.save_confusion_matrix(np.array([[3, 1], [0, 2]]), ["a", "b"], tmp_path / "cm.png")
    viz.save_confusion_matrix(np.array([[3, 1], [0, 2]]), ["a", "b"], tmp_path / "cm.png", normalize=True)
    ticks = []
    for fig in figures:
        fig.canvas.draw()
        ticks.append([t for t in fig.axes[1].get_yticks() if 0 <= t <= fig.axes[1].get_ylim()[1]])
    assert ticks[0] and all(t == int(t) for t in ticks[0])  # matplotlib's own ticks there: 0.0, 0.5, ..., 3.0
    assert any(t != int(t) for t in ticks[1])  # fractions of a row stay fractions


def test_overlays_draw_the_map_over_gray_and_fill_the_masks(tmp_path, monkeypatch):
    """The map over the image's luminance, whose blend keeps the colour bar's hues; a mask filled, so one covering
    the whole image shows (it has no contour) and one covering most of it reads as the region, not its holes."""
    drawn = {}  # axes -> the arrays drawn on it, in order
    imshow = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", lambda ax, x, *a, **k: drawn.setdefault(ax, []).append(x)
                        or imshow(ax, x, *a, **k))
    images = np.zeros((1, 8, 8, 3))
    images[..., 0] = 1.0  # pure red
    viz.save_anomaly_overlays(images, np.zeros((1, 8, 8)), tmp_path / "o.png", masks=np.ones((1, 8, 8), bool))
    (image,), (gray, heat), (shown, fill) = drawn.values()
    assert image.shape == shown.shape == (8, 8, 3) and heat.shape == (8, 8)
    assert gray.shape == (8, 8) and np.allclose(gray, 0.299)  # red's luminance
    assert np.ma.isMaskedArray(fill) and np.ma.count(fill) == 64  # every pixel of the all-anomalous mask filled


def test_cuts_at_one_roc_point_share_one_label(tmp_path, monkeypatch):
    """A small test split puts the 1 % and 5 % cuts on one point: one label for both, not two overprinted."""
    texts = []
    annotate = matplotlib.axes.Axes.annotate
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", lambda ax, text, *a, **k: texts.append(text)
                        or annotate(ax, text, *a, **k))
    points = {"1%": {"fpr": 0.0, "recall": 0.5}, "5%": {"fpr": 0.0, "recall": 0.5},
              "10%": {"fpr": 0.25, "recall": 0.75}}
    viz.save_roc_pr_curves([0, 1, 1, 0, 1, 0, 0, 1], [0.1, 0.9, 0.5, 0.3, 0.7, 0.6, 0.2, 0.4], tmp_path / "c.png",
                           operating_points=points)
    assert texts == ["1%, 5%: 50.0 %", "10%: 75.0 %"]
