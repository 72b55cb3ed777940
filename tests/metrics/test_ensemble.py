"""Ensembles of classification runs from their predictions.csv: the mean probabilities scored against labels computed
here with NumPy, the runs' own accuracies, and clear errors for runs that scored different images."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from ssm_jax.metrics import ensemble

CLASSES = ["p0", "p1_3", "p2_3", "p1"]


def write_run(workdir, probs, labels, paths=None, evaluation="eval", classes=CLASSES):
    """A workdir whose ``evaluation``/predictions.csv is laid out as classification evaluation writes it."""
    out = workdir / evaluation
    out.mkdir(parents=True)
    paths = paths or [f"/data/cell{i:04d}.png" for i in range(len(labels))]
    with (out / "predictions.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "prediction", "confidence"] + [f"p_{c}" for c in classes])
        for path, label, row in zip(paths, labels, probs):
            writer.writerow([path, classes[label], classes[int(np.argmax(row))], f"{row.max():.4f}"]
                            + [f"{p:.4f}" for p in row])
    return workdir


def random_probs(rng, n):
    p = rng.random((n, len(CLASSES))) ** 3
    return np.round(p / p.sum(1, keepdims=True), 4)


def test_mean_probabilities_are_scored_like_one_run(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 40)
    probs = [random_probs(rng, 40) for _ in range(3)]
    runs = [write_run(tmp_path / f"s{i}", p, labels) for i, p in enumerate(probs)]
    result = ensemble.ensemble(runs)
    assert result["accuracies"] == pytest.approx([np.mean(p.argmax(1) == labels) for p in probs])
    pred = np.mean(probs, 0).argmax(1)
    assert result["metrics"]["acc"] == pytest.approx(np.mean(pred == labels))
    recall = [np.mean(pred[labels == k] == k) for k in range(4)]
    np.testing.assert_allclose(result["metrics"]["per_class"]["recall"], recall)
    assert result["classes"] == CLASSES


def test_rows_are_matched_by_image_path_not_by_order(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 12)
    probs = random_probs(rng, 12)
    paths = [f"/data/cell{i:04d}.png" for i in range(12)]
    order = rng.permutation(12)
    a = write_run(tmp_path / "a", probs, labels, paths)
    b = write_run(tmp_path / "b", probs[order], labels[order], [paths[i] for i in order])
    result = ensemble.ensemble([a, b])
    assert result["accuracies"][0] == result["accuracies"][1] == result["metrics"]["acc"]


def test_runs_on_copies_of_the_dataset_at_different_places_are_matched(tmp_path):
    """A run on the GPU host's unpacked copy and one on the workstation's folder scored the same images."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, 6)
    probs = [random_probs(rng, 6) for _ in range(2)]
    names = [f"{'mono' if i % 2 else 'poly'}/cell{i:04d}.png" for i in range(6)]
    a = write_run(tmp_path / "a", probs[0], labels, [f"/tmp/data/elpv_256/images/{n}" for n in names])
    b = write_run(tmp_path / "b", probs[1], labels, [f"/home/qa/datasets/elpv/images/{n}" for n in names])
    result = ensemble.ensemble([a, b])
    expected = np.mean(((probs[0] + probs[1]) / 2).argmax(1) == labels)
    assert result["metrics"]["acc"] == pytest.approx(expected)
    c = write_run(tmp_path / "c", probs[1], labels, [f"/home/qa/datasets/elpv/images/{n}" for n in names[:5]]
                  + ["/home/qa/datasets/elpv/images/poly/cell9999.png"])
    with pytest.raises(ValueError, match=r"c differs from .*a in its paths \(below the folder they share\)"):
        ensemble.ensemble([a, c])


def test_another_evaluation_folder_and_a_file_are_read(tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 10)
    probs = random_probs(rng, 10)
    run = write_run(tmp_path / "s0", probs, labels, evaluation="eval_tta_d4")
    by_folder = ensemble.ensemble([run], "eval_tta_d4")
    by_file = ensemble.ensemble([run / "eval_tta_d4" / "predictions.csv"])
    assert by_folder["metrics"]["acc"] == by_file["metrics"]["acc"] == pytest.approx(np.mean(probs.argmax(1) == labels))


def test_runs_on_different_images_or_classes_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 8)
    a = write_run(tmp_path / "a", random_probs(rng, 8), labels)
    b = write_run(tmp_path / "b", random_probs(rng, 8), labels, [f"/other/cell{i}.png" for i in range(8)])
    with pytest.raises(ValueError, match=r"b differs from .*a in its paths"):
        ensemble.ensemble([a, b])
    c = write_run(tmp_path / "c", random_probs(rng, 8), (labels + 1) % 4)
    with pytest.raises(ValueError, match="in its labels"):
        ensemble.ensemble([a, c])
    d = write_run(tmp_path / "d", random_probs(rng, 8)[:, :3], labels % 3, classes=CLASSES[:3])
    with pytest.raises(ValueError, match="in its classes"):
        ensemble.ensemble([a, d])


def test_missing_predictions_name_what_was_expected(tmp_path, capsys):
    (tmp_path / "untrained").mkdir()
    with pytest.raises(SystemExit, match=r"untrained/eval/predictions.csv: not found; expected a workdir holding "
                                         r"eval/predictions.csv"):
        ensemble.main([str(tmp_path / "untrained")])
    with pytest.raises(SystemExit, match=r"nope: not found"):
        ensemble.main([str(tmp_path / "nope")])
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, 6)
    run = write_run(tmp_path / "s0", random_probs(rng, 6), labels)
    broken = write_run(tmp_path / "broken", random_probs(rng, 6), labels)
    csv_path = broken / "eval" / "predictions.csv"
    lines = csv_path.read_text().splitlines()
    lines[1] = ",".join(lines[1].split(",")[:-1] + ["n/a"])  # the first image's last probability
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match=r"broken/eval/predictions.csv: a probability column holds a non-number"):
        ensemble.main([str(broken)])
    ensemble.main([str(run)])
    out = capsys.readouterr().out
    assert f"| {run} |" in out and "ensemble of 1: ACC" in out


def test_predictions_in_another_encoding_are_named(tmp_path):
    """A predictions.csv written under a Latin-1 locale (before its outputs were UTF-8) is named, not a bare
    UnicodeDecodeError."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 4)
    run = write_run(tmp_path / "old", random_probs(rng, 4)[:, :2], labels, classes=["bon", "d\u00e9faut"])
    csv_path = run / "eval" / "predictions.csv"
    csv_path.write_bytes(csv_path.read_text(encoding="utf-8").encode("latin-1"))
    with pytest.raises(SystemExit, match=r"old/eval/predictions.csv is not UTF-8 .*Save it as UTF-8"):
        ensemble.main([str(run)])


def test_a_console_that_cannot_print_the_table_gets_it_escaped(tmp_path):
    """Class names the output's encoding cannot hold (an ASCII console here) are escaped, not a failure."""
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 4, 6)
    classes = ["ok", "\uae01\ud798", "p2", "p3"]
    runs = [str(write_run(tmp_path / f"s{i}", random_probs(rng, 6), labels, classes=classes)) for i in range(2)]
    done = subprocess.run([sys.executable, "-m", "ssm_jax.metrics.ensemble", *runs],
                          env={**os.environ, "PYTHONIOENCODING": "ascii"}, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"\\uae01\\ud798" in done.stdout
