"""The classification family's loss options: class weights from the training labels, label smoothing, bad values
named, the wiring from the config through the Experiment to the train step and the pipeline, and the evaluation's
two-group report of ordered classes with its operating points and flagging threshold."""

import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from PIL import Image

from configs import from_run
from ssm_jax.data import Record, Source
from ssm_jax.models.resnet_classifier import resnet_model_config
from ssm_jax.training import classification, run
from ssm_jax.training.mesh import make_mesh
from tests.training.crash import crash_during_step


def test_balanced_weights_are_inverse_class_frequency():
    labels = [0, 0, 0, 1, 2, 2, 0, 2]  # counts 4, 1, 3 of N = 8: N / (K n_k) = 8/12, 8/3, 8/9
    weights = classification.resolve_class_weights("balanced", labels, 3)
    np.testing.assert_allclose(weights, [2 / 3, 8 / 3, 8 / 9], rtol=1e-6)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(np.mean(weights[labels]), 1.0, rtol=1e-6)  # mean weight over the images is 1


def test_none_and_explicit_weights():
    assert classification.resolve_class_weights("none", [0, 1], 2) is None
    for spec in ("1,2.5,3", "(1, 2.5, 3)", (1, 2.5, 3)):
        np.testing.assert_array_equal(classification.resolve_class_weights(spec, [0], 3), [1.0, 2.5, 3.0])


@pytest.mark.parametrize("spec, labels", [("balance", [0, 1, 2]), ("1,2", [0, 1, 2]), ("1,-2,3", [0, 1, 2]),
                                          ("1,x,3", [0, 1, 2]), ("balanced", [0, 0, 2])])
def test_bad_class_weights_are_named(spec, labels):
    with pytest.raises(ValueError, match=r"loss\.class_weights="):
        classification.resolve_class_weights(spec, labels, 3)


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_bad_label_smoothing_is_named(tiny_config, value):
    loss = tiny_config().loss.copy_and_resolve_references()
    loss.label_smoothing = value
    with pytest.raises(ValueError, match=r"loss\.label_smoothing="):
        classification.make_train_step(loss, make_mesh())


def test_bad_ordinal_is_named(tiny_config):
    loss = tiny_config().loss.copy_and_resolve_references()
    loss.ordinal = -1.0
    with pytest.raises(ValueError, match=r"loss\.ordinal=-1.0; expected a value >= 0"):
        classification.make_train_step(loss, make_mesh())


def test_bad_nce_similarity_is_named(tiny_config):
    loss = tiny_config().loss.copy_and_resolve_references()
    loss.nce_similarity = "l2"
    with pytest.raises(ValueError, match=r"loss\.nce_similarity='l2'; expected one of cos, dot"):
        classification.make_train_step(loss, make_mesh())


@pytest.mark.slow  # an end-to-end Experiment run
def test_experiment_passes_training_set_weights_and_augmentations(tiny_config, tmp_path, monkeypatch):
    config = tiny_config(max_steps=2)
    with config.unlocked():
        config.loss.class_weights, config.loss.label_smoothing = "balanced", 0.1
        config.data.rot90, config.data.affine = True, (5.0, 0.05, 0.05)
    real_make, real_pipeline, seen, pipelines = classification.make_train_step, run.make_pipeline, {}, []

    def recording_make(loss_config, mesh, *args, **kwargs):
        seen.update(kwargs)
        return real_make(loss_config, mesh, *args, **kwargs)

    def recording_pipeline(source, **kwargs):
        pipelines.append(kwargs)
        return real_pipeline(source, **kwargs)

    monkeypatch.setattr(classification, "make_train_step", recording_make)
    monkeypatch.setattr(run, "make_pipeline", recording_pipeline)
    experiment = run.Experiment(config, tmp_path)
    experiment.train()
    labels = experiment.train_source.labels
    np.testing.assert_allclose(seen["class_weights"], len(labels) / (3 * np.bincount(labels)), rtol=1e-6)
    experiment.evaluate()
    (train,), (test,) = ([p for p in pipelines if p["train"] is flag] for flag in (True, False))
    assert (train["rot90"], train["affine"]) == (True, (5.0, 0.05, 0.05))
    assert (test["rot90"], test["affine"]) == (False, (0.0, 0.0, 0.0))  # augmentations in training only


def _cells(folder, labels, names=("p0", "p1_3", "p2_3", "p1")):
    """A Source of small gray PNG files, image i filled with the value 10 * i (mod 250), labelled ``labels``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(labels)):
        Image.fromarray(np.full((12, 10), 10 * i % 250, np.uint8)).save(folder / f"cell{i}.png")
    return Source([Record(str(folder / f"cell{i}.png"), int(y)) for i, y in enumerate(labels)], names)


def test_evaluation_reports_two_groups_of_ordered_classes(tmp_path):
    labels = np.array([0, 1, 2, 3, 3, 0, 1, 2])
    probs = np.eye(4)[[0, 0, 3, 2, 1, 2, 1, 2]] * 0.7 + 0.075  # predicted 0 0 3 2 1 2 1 2
    source = _cells(tmp_path / "cells", labels)
    predictions = {"probs": probs, "labels": labels, "indices": np.arange(8)}
    summary = classification.write_evaluation(predictions, source, tmp_path, binary_from=2)
    # groups (0, 1) and (2, 3): true 0 0 1 1 1 0 0 1, predicted 0 0 1 1 0 1 0 1
    ranking = ("auroc", "ap", "at_false_alarms")  # tested below
    grouped = {k: v for k, v in summary["binary"].items() if k not in ranking}
    assert grouped == {"positive": ["p2_3", "p1"], "acc": 0.75, "precision": 0.75, "recall": 0.75, "f1": 0.75,
                       "num_positive": 4}
    assert summary["acc"] == 0.375  # the four-class accuracy is untouched
    assert json.loads((tmp_path / "metrics.json").read_text())["binary"] == summary["binary"]
    assert "2 groups, positive = p2_3, p1 (4 images): accuracy 0.7500" in classification.format_report(summary)
    plain = classification.write_evaluation(predictions, source, tmp_path / "plain")
    assert "binary" not in plain and "2 groups" not in classification.format_report(plain)
    assert not (tmp_path / "plain" / "binary_roc_pr.png").exists()


def test_report_of_many_classes_lists_the_lowest_f1():
    """Past LISTED_CLASSES classes the terminal gets the LOWEST_LISTED with the lowest f1, lowest first."""
    k = classification.LISTED_CLASSES + 1
    f1 = np.random.default_rng(0).permutation(k) / k
    per_class = {f"c{i}": {"precision": f, "recall": f, "f1": f, "support": 2} for i, f in enumerate(f1)}
    summary = {"per_class": per_class, "precision": 0.5, "recall": 0.5, "f1": 0.5, "num_images": 2 * k, "acc": 0.5}
    listed = [line.split()[0] for line in classification.format_report(summary).splitlines()
              if line.startswith("c") and not line.startswith("class")]
    assert listed == [f"c{i}" for i in np.argsort(f1)[:classification.LOWEST_LISTED]]
    del per_class[f"c{k - 1}"]
    summary["per_class"] = per_class
    assert len([line for line in classification.format_report(summary).splitlines() if line.startswith("c")
                and not line.startswith("class")]) == k - 1


def test_two_groups_ranked_by_the_positive_probability_against_sklearn(tmp_path):
    """AU-ROC and AP of p(class >= binary_from) summed over the positive classes, against scikit-learn on random
    probabilities; the curves are drawn; one group in the test labels leaves both undefined (None), not an error."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 60)
    probs = rng.dirichlet(np.ones(4), 60) + np.eye(4)[labels] * rng.uniform(0, 1, (60, 1))
    probs /= probs.sum(-1, keepdims=True)
    source = _cells(tmp_path / "cells", labels)
    predictions = {"probs": probs, "labels": labels, "indices": np.arange(60)}
    summary = classification.write_evaluation(predictions, source, tmp_path, binary_from=2)
    binary, positive, score = summary["binary"], labels >= 2, probs[:, 2:].sum(-1)
    assert binary["auroc"] == pytest.approx(roc_auc_score(positive, score), abs=1e-12)
    assert binary["ap"] == pytest.approx(average_precision_score(positive, score), abs=1e-12)
    fpr, tpr, thresholds = roc_curve(positive, score, drop_intermediate=False)
    report = classification.format_report(summary)
    for rate, key in ((0.01, "1%"), (0.05, "5%"), (0.1, "10%")):
        within = np.flatnonzero(fpr <= rate)
        best = within[np.argmax(tpr[within])]  # the highest cut of the most recall
        point = binary["at_false_alarms"][key]
        assert point["recall"] == pytest.approx(tpr[best], abs=1e-12)
        assert point["fpr"] == pytest.approx(fpr[best], abs=1e-12)
        assert point["threshold"] == (None if best == 0 else pytest.approx(thresholds[best], abs=1e-12))
        assert f"  at most {key} false alarms: flag " in report
    assert (tmp_path / "binary_roc_pr.png").stat().st_size > 0
    assert f"AU-ROC {binary['auroc']:.4f}, AP {binary['ap']:.4f}" in report
    one_group = {**predictions, "labels": np.zeros(60, np.int64)}
    summary = classification.write_evaluation(one_group, source, tmp_path / "one", binary_from=2)
    assert (summary["binary"]["auroc"], summary["binary"]["ap"]) == (None, None)
    assert summary["binary"]["at_false_alarms"] == {"1%": None, "5%": None, "10%": None}
    assert "AU-ROC" not in classification.format_report(summary)


def test_subsets_are_scored_apart_against_sklearn(tmp_path):
    """Records naming a subset (ELPV's cell type): ``per_subset`` holds each one's accuracy, macro F1, per-class
    recall and two-group accuracy and AU-ROC, as scikit-learn computes them on that subset's images alone; the
    report prints a line each and predictions.csv a ``subset`` column. Without subsets, neither."""
    from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score
    rng = np.random.default_rng(1)
    labels = np.r_[rng.integers(0, 4, 40), rng.integers(0, 3, 30)]  # "poly" lacks class 3
    probs = rng.dirichlet(np.ones(4), 70) + np.eye(4)[labels] * rng.uniform(0, 1, (70, 1))
    probs[40:, 3] = 0.0  # and none is predicted there, so its macro F1 is over the classes present
    probs /= probs.sum(-1, keepdims=True)
    subsets = ["mono"] * 40 + ["poly"] * 30
    cells = _cells(tmp_path / "cells", labels)
    source = Source([Record(r.path, r.label, subset=t) for r, t in zip(cells.records, subsets)], cells.class_names)
    order = rng.permutation(70)  # the predictions come in the pipeline's order, not the source's
    predictions = {"probs": probs[order], "labels": labels[order], "indices": order}
    summary = classification.write_evaluation(predictions, source, tmp_path / "eval", binary_from=2)
    assert list(summary["per_subset"]) == ["mono", "poly"]
    pred = probs.argmax(-1)
    for name, keep in (("mono", slice(0, 40)), ("poly", slice(40, 70))):
        sub, y, p = summary["per_subset"][name], labels[keep], pred[keep]
        present = np.union1d(y, p)
        assert sub["num_images"] == len(y)
        assert sub["acc"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
        assert sub["f1"] == pytest.approx(f1_score(y, p, labels=present, average="macro"), abs=1e-12)
        recalls = recall_score(y, p, labels=[0, 1, 2, 3], average=None, zero_division=0)
        assert [sub["recall"][c] for c in cells.class_names] == [
            pytest.approx(r, abs=1e-12) if c in y else None for c, r in enumerate(recalls)]
        assert sub["binary"]["acc"] == pytest.approx(accuracy_score(y >= 2, p >= 2), abs=1e-12)
        assert sub["binary"]["auroc"] == pytest.approx(roc_auc_score(y >= 2, probs[keep, 2:].sum(-1)), abs=1e-12)
    report = classification.format_report(summary)
    assert f"subset poly (30 images): accuracy {summary['per_subset']['poly']['acc']:.4f}" in report
    assert report.splitlines()[-1].split("recall ")[1].split(";")[0].endswith(" / -")  # poly has no p1 cell
    with (tmp_path / "eval" / "predictions.csv").open() as f:
        assert {r["path"]: r["subset"] for r in csv.DictReader(f)} == {r.path: r.subset for r in source.records}
    plain = classification.write_evaluation(predictions, cells, tmp_path / "plain")
    assert "per_subset" not in plain and "subset" not in classification.format_report(plain)
    assert "subset" not in (tmp_path / "plain" / "predictions.csv").read_text().splitlines()[0]


def test_most_confident_mistakes_first():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05], [0.3, 0.7]])
    labels = np.array([1, 1, 1, 0, 0, 0])  # wrong: 0 (0.9), 2 (0.6), 3 (0.7), 5 (0.7)
    assert classification.most_confident_mistakes(probs, labels, 16).tolist() == [0, 3, 5, 2]
    assert classification.most_confident_mistakes(probs, labels, 2).tolist() == [0, 3]
    assert classification.most_confident_mistakes(probs, np.argmax(probs, -1), 16).size == 0


def test_mistakes_picture_shows_the_wrong_images_under_their_labels(tmp_path, monkeypatch):
    """mistakes.png holds the images of the most confident mistakes, read from the source, titled name, true ->
    predicted class and confidence; a run with no mistake writes none."""
    labels = np.array([0, 1, 2, 3, 3, 0])
    probs = np.eye(4)[[0, 3, 2, 0, 3, 1]] * 0.6 + 0.1  # wrong: 1 (p1_3 -> p1), 3 (p1 -> p0), 5 (p0 -> p1_3)
    probs[3] = [0.85, 0.05, 0.05, 0.05]
    source = _cells(tmp_path / "cells", labels)
    drawn = {}
    real_grid = classification.viz.save_image_grid

    def recording_grid(images, titles, path, **kwargs):
        drawn.update(images=images, titles=titles)
        return real_grid(images, titles, path, **kwargs)

    monkeypatch.setattr(classification.viz, "save_image_grid", recording_grid)
    predictions = {"probs": probs, "labels": labels, "indices": np.arange(6)}
    classification.write_evaluation(predictions, source, tmp_path / "eval")
    assert drawn["titles"] == ["cell3.png\np1 -> p0 (0.85)", "cell1.png\np1_3 -> p1 (0.70)",
                               "cell5.png\np0 -> p1_3 (0.70)"]
    assert [int(img[0, 0, 0]) for img in drawn["images"]] == [30, 10, 50]
    assert all(img.shape == (12, 10, 3) for img in drawn["images"])
    assert (tmp_path / "eval" / "mistakes.png").stat().st_size > 0
    right = {**predictions, "labels": probs.argmax(-1)}
    classification.write_evaluation(right, source, tmp_path / "right")
    assert not (tmp_path / "right" / "mistakes.png").exists()


def test_folder_picks_are_the_likeliest_defects_or_the_least_sure():
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.3, 0.3, 0.2], [0.5, 0.1, 0.3, 0.1], [0.05, 0.05, 0.1, 0.8],
                      [0.4, 0.3, 0.2, 0.1]])
    # p(2/3) + p(1): 0.2 0.5 0.4 0.9 0.3 -> 3, 1, 2, 4, 0; the top class's probability: 0.7 0.3 0.5 0.8 0.4
    assert classification.folder_picks(probs, 2, 16).tolist() == [3, 1, 2, 4, 0]
    assert classification.folder_picks(probs, 2, 2).tolist() == [3, 1]
    assert classification.folder_picks(probs, 0, 16).tolist() == [1, 4, 2, 0, 3]
    assert classification.folder_picks(np.full((3, 2), 0.5), 0, 16).tolist() == [0, 1, 2]  # ties: by position


def test_folder_picture_shows_the_picks_under_their_predictions(tmp_path, monkeypatch):
    """predict_<name>.png holds folder_picks' images, read from the source through the predictions' indices, titled
    name, predicted class and confidence, the group's probability with two groups and whether it is flagged."""
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.3, 0.3, 0.2], [0.5, 0.1, 0.3, 0.1], [0.05, 0.05, 0.1, 0.8],
                      [0.4, 0.3, 0.2, 0.1]])
    source = _cells(tmp_path / "cells", np.zeros(5, np.int64))
    predictions = {"probs": probs, "indices": np.arange(5)[::-1].copy()}  # row r is image 4 - r
    drawn = []
    real_grid = classification.viz.save_image_grid

    def recording_grid(images, titles, path, **kwargs):
        drawn.append({"images": images, "titles": titles, "path": path})
        return real_grid(images, titles, path, **kwargs)

    monkeypatch.setattr(classification.viz, "save_image_grid", recording_grid)
    out = classification.write_folder_predictions(predictions, source, tmp_path / "eval", "cells", binary_from=2,
                                                  flag_threshold=0.45)
    assert drawn[0]["titles"][:3] == ["cell1.png\np1 (0.80)\np(p2_3 + p1) 0.90, flagged",
                                      "cell3.png\np1_3 (0.30)\np(p2_3 + p1) 0.50, flagged",
                                      "cell2.png\np0 (0.50)\np(p2_3 + p1) 0.40"]
    assert [int(img[0, 0, 0]) for img in drawn[0]["images"]] == [10, 30, 20, 0, 40]
    assert drawn[0]["path"] == out.with_suffix(".png") and out.with_suffix(".png").stat().st_size > 0
    classification.write_folder_predictions(predictions, source, tmp_path / "plain", "cells")
    assert drawn[1]["titles"][:2] == ["cell3.png\np1_3 (0.30)", "cell0.png\np0 (0.40)"]
    (tmp_path / "cells" / "cell3.png").unlink()  # moved after its prediction: the CSV has it, the picture not
    with pytest.warns(UserWarning, match=r"predict_cells.png leaves out .*cell3.png: image file .* does not exist"):
        out = classification.write_folder_predictions(predictions, source, tmp_path / "moved", "cells")
    assert [t.split("\n")[0] for t in drawn[2]["titles"]] == ["cell0.png", "cell2.png", "cell4.png", "cell1.png"]
    assert len(out.read_text().splitlines()) == 6


def test_flag_threshold_flags_the_group_in_both_csvs_and_scores_its_rates(tmp_path):
    """eval.flag_threshold: 1 in a ``flagged`` column where p(class >= binary_from) reaches it, in predictions.csv
    and predict_<name>.csv, and that cut's recall and false alarms counted by hand; off (0), no column."""
    labels = np.array([0, 1, 2, 3, 3, 0, 1, 2])
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.3, 0.3, 0.2], [0.5, 0.1, 0.2, 0.2], [0.1, 0.1, 0.1, 0.7],
                      [0.6, 0.2, 0.1, 0.1], [0.3, 0.2, 0.25, 0.25], [0.6, 0.3, 0.05, 0.05], [0.1, 0.1, 0.4, 0.4]])
    # p(2/3) + p(1) = 0.2 0.5 0.4 0.8 0.2 0.5 0.1 0.8; at 0.45: flagged 0 1 0 1 0 1 0 1
    source = _cells(tmp_path / "cells", labels)
    predictions = {"probs": probs, "labels": labels, "indices": np.arange(8)}
    summary = classification.write_evaluation(predictions, source, tmp_path / "eval", binary_from=2,
                                              flag_threshold=0.45)
    # positives (2, 3): images 2, 3, 4, 7 -> flagged 3 and 7; the rest: 0, 1, 5, 6 -> flagged 1 and 5
    assert summary["binary"]["at_flag_threshold"] == {"threshold": 0.45, "recall": 0.5, "fpr": 0.5}
    with (tmp_path / "eval" / "predictions.csv").open() as f:
        assert [int(r["flagged"]) for r in csv.DictReader(f)] == [0, 1, 0, 1, 0, 1, 0, 1]
    report = classification.format_report(summary)
    assert "  at eval.flag_threshold: flag p(p2_3 + p1) >= 0.4500: recall 0.5000, false alarms 0.5000" in report
    out = classification.write_folder_predictions({**predictions, "indices": np.arange(8)[::-1].copy()}, source,
                                                  tmp_path / "eval", "cells", binary_from=2, flag_threshold=0.45)
    with out.open() as f:  # written in path order: predictions row r is image indices[r]
        assert [int(r["flagged"]) for r in csv.DictReader(f)] == [1, 0, 1, 0, 1, 0, 1, 0]
    unread = {"probs": predictions["probs"][:7], "indices": np.arange(8)[::-1][:7].copy()}  # image 0 skipped
    out = classification.write_folder_predictions(unread, source, tmp_path / "unread", "cells", binary_from=2,
                                                  flag_threshold=0.45)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [r.path for r in source.records]
    assert set(rows[0].values()) == {source.records[0].path, ""} and rows[1]["flagged"] == "0"
    plain = classification.write_evaluation(predictions, source, tmp_path / "plain", binary_from=2)
    assert "at_flag_threshold" not in plain["binary"]
    assert "at eval.flag_threshold" not in classification.format_report(plain)
    assert "flagged" not in (tmp_path / "plain" / "predictions.csv").read_text().splitlines()[0]


def test_flag_threshold_reaches_evaluation_and_folder_predictions_through_the_experiment(tiny_config, tmp_path,
                                                                                         capsys):
    config = tiny_config(max_steps=2)
    with config.unlocked():
        config.eval.binary_from, config.eval.flag_threshold = 1, 0.5
    experiment = run.Experiment(config, tmp_path / "run")
    experiment.train()
    summary = experiment.evaluate()
    assert summary["binary"]["at_flag_threshold"]["threshold"] == 0.5
    folder = tmp_path / "new"
    _cells(folder, np.zeros(3, np.int64))
    (folder / "cell2.png").rename(folder / "cell 2, left.png")  # a comma in a name is quoted, not a new column
    capsys.readouterr()
    out = experiment.predict_folder(folder)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[0]["path"] == str(folder / "cell 2, left.png") and None not in rows[0]
    assert out.with_suffix(".png").stat().st_size > 0
    assert capsys.readouterr().out.strip().endswith(f"predicted 3 of 3 images -> {out}, predict_new.png")
    for r in rows:  # probabilities to 4 decimals: the flag follows their sum, away from the cut's rounding
        group = float(r["p_b"]) + float(r["p_c"])
        assert abs(group - 0.5) < 2e-4 or int(r["flagged"]) == (group >= 0.5)


@pytest.mark.parametrize("threshold, binary_from", [(1.5, 1), (-0.1, 1), (0.5, 0)])
def test_a_flag_threshold_without_a_group_or_outside_0_1_is_named_before_training(tiny_config, tmp_path, threshold,
                                                                                   binary_from):
    config = tiny_config()
    with config.unlocked():
        config.eval.flag_threshold, config.eval.binary_from = threshold, binary_from
    expected = r"config\.eval\.flag_threshold=-?[\d.]+(: expected a value >= 0| must be 0 \(off\) or a probability)"
    with pytest.raises(ValueError, match=expected):  # a negative one is refused with every anomaly score's
        run.Experiment(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("value", [3, -1])
def test_binary_from_outside_the_classes_is_named_before_training(tiny_config, tmp_path, value):
    config = tiny_config()
    with config.unlocked():
        config.eval.binary_from = value
    message = r"config\.eval\.binary_from=-?\d must be 0 \(off\) or .* 1\.\.2, of \['a', 'b', 'c'\]"
    with pytest.raises(ValueError, match=message):
        run.Experiment(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


class _BatchNormClassifier(nn.Module):
    """conv 3x3 -> BatchNorm -> ReLU -> mean pool -> dense: the smallest classifier with running statistics."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Conv(8, (3, 3), padding="VALID")(x))
        return {"logits": nn.Dense(3)(jnp.mean(nn.relu(x), axis=(1, 2)))}


@pytest.mark.parametrize("accum", [1, 2])
def test_step_moves_batch_statistics_towards_the_batch(tiny_config, accum):
    """A model with BatchNorm (the ResNet classifier) normalises over the batch and moves its running statistics by
    momentum 0.9 towards the batch's, checked against a plain convolution of the images; with 2 micro-batches, by
    the mean of the two micro-batches' moves. The step also trains the parameters."""
    mesh, rng = make_mesh(), np.random.default_rng(0)
    state = classification.create_state(_BatchNormClassifier(), optax.adamw(1e-3), jax.random.PRNGKey(0), 8, mesh)
    batch = {"image": rng.standard_normal((8, 8, 8, 3), dtype=np.float32), "label": np.arange(8, dtype=np.int32) % 3}
    kernel, head = (np.array(state.params[name]["kernel"]) for name in ("Conv_0", "Dense_0"))
    conv = jax.lax.conv_general_dilated(jnp.asarray(batch["image"]), jnp.asarray(kernel), (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    conv = np.asarray(conv, np.float64) + np.asarray(state.params["Conv_0"]["bias"], np.float64)
    micro = [conv[i::accum] for i in range(accum)]  # training.accumulate's micro-batches: rows i, i + k, ...
    new_state, metrics = classification.make_train_step(tiny_config().loss, mesh, accum)(state, batch)
    stats = jax.device_get(new_state.model_state["batch_stats"]["BatchNorm_0"])
    np.testing.assert_allclose(stats["mean"], np.mean([0.1 * m.mean(axis=(0, 1, 2)) for m in micro], axis=0),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["var"], np.mean([0.9 + 0.1 * m.var(axis=(0, 1, 2)) for m in micro], axis=0),
                               rtol=1e-5)
    assert np.isfinite(float(metrics["loss"]))
    assert not np.allclose(np.asarray(new_state.params["Dense_0"]["kernel"]), head)


@pytest.mark.slow  # end-to-end ResNet-18 training on CPU
def test_resnet_classifier_trains_evaluates_and_resumes_with_its_batch_statistics(tiny_config, tmp_path,
                                                                                   monkeypatch):
    """A run of the ResNet baseline through the Experiment: a crash after the step-2 checkpoint and a rerun end with
    the uninterrupted run's parameters and running statistics, evaluation writes the family's outputs, and a run
    started from it (``init_from``) takes its backbone with the running statistics."""
    def resnet_config(**train):
        config = tiny_config(max_steps=4, checkpoint_every=2, **train)
        with config.unlocked():
            config.model = resnet_model_config(3, arch="resnet18")
            config.model.name = "resnet"
            config.data.image_size = 32
        return config

    config = resnet_config()
    straight = run.Experiment(config, tmp_path / "straight")
    straight.train()
    crash_during_step(monkeypatch, classification, step=3)
    with pytest.raises(KeyboardInterrupt):
        run.Experiment(config, tmp_path / "resumed").train()
    monkeypatch.undo()
    resumed = run.Experiment(config, tmp_path / "resumed")
    resumed.train()
    for name in ("params", "model_state"):
        expected, actual = (jax.device_get(getattr(e.state, name)) for e in (straight, resumed))
        assert jax.tree.structure(actual) == jax.tree.structure(expected)
        jax.tree.map(np.testing.assert_array_equal, actual, expected)
    assert "batch_stats" in resumed.state.model_state
    summary = resumed.evaluate()
    assert 0 <= summary["acc"] <= 1 and (tmp_path / "resumed/eval/confusion.png").is_file()
    # Started from the run with init_from: the backbone comes with its running statistics, the head fresh.
    started = run.Experiment(resnet_config(init_from=str(tmp_path / "straight")), tmp_path / "ft").state
    trained = jax.device_get(straight.state)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(started.model_state), trained.model_state)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(started.params["encoder"]), trained.params["encoder"])
    assert not np.allclose(np.asarray(started.params["head"]["kernel"]), trained.params["head"]["kernel"])


@pytest.mark.parametrize("section, key, value, message", [
    ("eval", "tta", "flip", r"config\.eval\.tta='flip'; valid"),
    ("train", "max_to_keep", 0, r"config\.train\.max_to_keep=0: expected an integer >= 1"),
    ("train", "checkpoint_every", 0, r"config\.train\.checkpoint_every=0: expected an integer >= 1"),
    ("train", "epochs", 0, r"config\.train\.epochs=0: expected an integer >= 1"),
    ("model", "d_state", 0, r"config\.model\.d_state=0: expected an integer >= 1"),
    ("optim", "warmup_fraction", 5.0, r"config\.optim\.warmup_fraction=5\.0: expected a fraction in \[0, 1\]"),
])
def test_settings_that_would_fail_after_training_are_named_before_it(tiny_config, tmp_path, section, key, value,
                                                                     message):
    """A typo in the evaluation's test-time augmentation used to surface only once training ended; max_to_keep 0
    let orbax delete every checkpoint, the last included; a zero count divided by zero; d_state 0 built an SSM
    without state whose first checkpoint could not be written; a warm-up given as a percent trained silently."""
    config = tiny_config()
    with config.unlocked():
        config[section][key] = value
    with pytest.raises(ValueError, match=message):
        run.Experiment(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_layer_decay_on_a_model_whose_blocks_it_cannot_number_is_named(tiny_config, tmp_path):
    """It failed at the first step with "layer_ids: no layer for the parameters 'encoder'"."""
    config = tiny_config()
    with config.unlocked():
        config.model = resnet_model_config(3, arch="resnet18")
        config.model.name = "resnet"
        config.optim.layer_decay = 0.75
    with pytest.raises(ValueError, match=r"layer_decay=0.75 numbers MemoryMamba's blocks.*'encoder'.*leave it 1.0"):
        run.Experiment(config, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_workdir_with_a_tilde_is_the_home_folder(tiny_config, tmp_path, monkeypatch):
    """``--workdir=~/runs/x``: the shell does not expand ~ after =, so the run does."""
    monkeypatch.setenv("HOME", str(tmp_path))
    experiment = run.Experiment(tiny_config(), "~/runs/x")
    assert experiment.workdir == tmp_path / "runs" / "x" and (tmp_path / "runs" / "x" / "checkpoints").is_dir()


def test_an_unknown_activation_dtype_is_named(tiny_config, tmp_path):
    config = tiny_config()
    with config.unlocked():
        config.model.dtype = "bf16"
    with pytest.raises(ValueError, match=r"config\.model\.dtype='bf16'; valid: float32, bfloat16"):
        run.Experiment(config, tmp_path)


def test_a_trained_run_predicts_new_images_where_its_training_data_is_not(tiny_config, tmp_path):
    """An inspection station holds the run directory, not the dataset: ``train_set.json`` stands in for it."""
    config = tiny_config(max_steps=2)
    experiment = run.Experiment(config, tmp_path / "run")
    experiment.train()
    saved = json.loads((tmp_path / "run" / "train_set.json").read_text())
    assert saved == {"task": "classification", "class_names": list(experiment.train_source.class_names),
                     "num_images": len(experiment.train_source), "center_crop": 1.0, "bit_depth": 0}
    folder = tmp_path / "new"
    _cells(folder, np.zeros(3, np.int64))
    expected = experiment.predict_folder(folder).read_text()
    elsewhere = config.copy_and_resolve_references()
    elsewhere.data.root = str(tmp_path / "not here")
    station = run.Experiment.for_eval(elsewhere, tmp_path / "run", predict_only=True)
    assert station.predict_folder(folder).read_text() == expected
    with pytest.raises(FileNotFoundError, match="not here"):  # evaluating on the test split still reads the data
        run.Experiment.for_eval(elsewhere, tmp_path / "run")
    (tmp_path / "run" / "train_set.json").write_text('{"task": "classification"}')
    with pytest.raises(ValueError, match=r"train_set.json is unreadable \(KeyError: 'class_names'\).*delete it"):
        run.Experiment.for_eval(elsewhere, tmp_path / "run", predict_only=True)
    (tmp_path / "run" / "train_set.json").unlink()  # a run trained before the file existed: read from the data once
    run.Experiment.for_eval(config, tmp_path / "run", predict_only=True)
    assert json.loads((tmp_path / "run" / "train_set.json").read_text()) == saved

    own = from_run.get_config(str(tmp_path / "run"))  # the run's config.json, without the config file or overrides
    assert own.to_dict() == config.to_dict() and own.is_locked
    again = run.Experiment.for_eval(own, tmp_path / "run", predict_only=True)
    assert again.predict_folder(folder).read_text() == expected
    with pytest.raises(FileNotFoundError, match=r"nowhere/config.json not found; expected the config.json"):
        from_run.get_config(str(tmp_path / "nowhere"))


def test_outputs_are_utf_8_whatever_the_locale(tmp_path):
    """Class names and paths in other scripts are written as UTF-8 where the locale's encoding cannot hold them (an
    ASCII locale here), not refused after the whole evaluation; train.py and eval.py print them escaped there."""
    script = tmp_path / "write.py"
    script.write_text(
        "import sys\n"
        "import numpy as np\n"
        "from ssm_jax.data import Record, Source\n"
        "from ssm_jax.training import classification\n"
        "source = Source([Record('\\u7ebfA/\\u5212\\u75d5_1.png', 1), Record('\\u7ebfA/ok_2.png', 0)],"
        " ['\\u826f\\u54c1', '\\u5212\\u75d5'])\n"
        "predictions = {'probs': np.array([[0.2, 0.8], [0.9, 0.1]], np.float32), 'indices': np.arange(2)}\n"
        "classification.write_folder_predictions(predictions, source, sys.argv[1], 'line_a')\n"
        "from ssm_jax.training import cli\n"
        "cli.run(['eval.py'], print, 'report: ' + source.class_names[1])\n", encoding="utf-8")
    env = {**os.environ, "PYTHONUTF8": "0", "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0",
           "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                          encoding="utf-8", errors="replace")
    assert done.returncode == 0, done.stderr[-2000:]
    with (tmp_path / "predict_line_a.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["path"], r["prediction"]) for r in rows] == [("线A/划痕_1.png", "划痕"), ("线A/ok_2.png", "良品")]
    assert "p_良品" in rows[0]
    assert done.stdout.splitlines()[-1] == "report: \\u5212\\u75d5"
