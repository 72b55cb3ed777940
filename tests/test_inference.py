"""Predictor: a trained run's predictions for files and arrays in a program, against eval.py's folder prediction
(the input pipeline's path), for every image form it takes, in batches longer than the evaluation's, with flags, and
bad input named."""

import argparse
import csv
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from benchmarks import predict_latency
from ssm_jax.data import replicas
from ssm_jax.inference import Predictor
from ssm_jax.training import run
from tests.training.conftest import make_tiny_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny MemoryMamba classifier (3 classes, 16 px, 4 virtual devices) trained 8 steps."""
    folder_root = replicas.write_replica("folder", str(tmp_path_factory.mktemp("data")), per_class=12)
    workdir = tmp_path_factory.mktemp("run")
    run.Experiment(make_tiny_config(folder_root), workdir).train()
    return workdir


def _forms(seed=0):
    """Images of every form a camera or a file gives, none of them 16 px: name -> uint8/uint16 pixels."""
    rng = np.random.default_rng(seed)
    return {"rgb": rng.integers(0, 256, (40, 30, 3), dtype=np.uint8),
            "gray": rng.integers(0, 256, (21, 21), dtype=np.uint8),
            "gray16": rng.integers(0, 65536, (24, 24), dtype=np.uint16),
            "rgba": rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)}


def test_files_and_arrays_predict_as_eval_predicts_a_folder(workdir, tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    forms = _forms()
    for name, pixels in forms.items():
        Image.fromarray(pixels).save(folder / f"{name}.png")
    csv_path = run.Experiment.for_eval(make_tiny_config("/nowhere"), workdir, predict_only=True).predict_folder(folder)
    with open(csv_path) as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    predictor = Predictor.from_run(workdir)
    assert predictor.class_names == ("a", "b", "c") and predictor.task == "classification"
    paths = [folder / f"{name}.png" for name in forms]
    from_files = predictor(paths)
    expected = np.array([[float(rows[str(p)][f"p_{c}"]) for c in "abc"] for p in paths])
    np.testing.assert_allclose(from_files["probs"], expected, atol=6e-5)  # the CSV keeps 4 decimals
    np.testing.assert_array_equal(from_files["predicted"], expected.argmax(-1))
    from_arrays = predictor(list(forms.values()))
    np.testing.assert_array_equal(from_arrays["probs"], from_files["probs"])  # the same pixels, the same way
    gray3 = predictor([forms["gray"][..., None]])["probs"]  # (H, W, 1) is grayscale too
    np.testing.assert_array_equal(gray3, from_files["probs"][1:2])


def test_batches_longer_than_the_evaluations_split_and_pad_alike(workdir):
    predictor = Predictor.from_run(workdir)
    assert predictor.config.train.eval_batch_size == 8
    images = np.random.default_rng(1).integers(0, 256, (11, 20, 20, 3), dtype=np.uint8)  # 8 + 3 (padded to 4)
    together = predictor(images)
    one_by_one = np.concatenate([predictor([image])["probs"] for image in images])
    np.testing.assert_allclose(together["probs"], one_by_one, rtol=1e-6, atol=1e-7)
    assert together["probs"].shape == (11, 3) and "flagged" not in together
    empty = predictor([])
    assert empty["probs"].shape == (0, 3) and empty["predicted"].shape == (0,)


def test_images_prepared_by_threads_predict_as_by_one(workdir):
    """Three batches (8, 8, 3), prepared by three threads while the batch before runs: the results of one thread, in
    order; a bad image in the second batch is named by its place in the call."""
    images = list(np.random.default_rng(3).integers(0, 256, (19, 20, 20, 3), dtype=np.uint8))
    images[4] = images[4][..., 0]  # grayscale among the colour frames
    alone = Predictor.from_run(workdir, workers=1)(images)["probs"]
    threaded = Predictor.from_run(workdir, workers=3)
    np.testing.assert_array_equal(threaded(images)["probs"], alone)
    assert alone.shape == (19, 3)
    with pytest.raises(ValueError, match="image 9 has dtype float32"):
        threaded([*images[:9], images[9].astype(np.float32), *images[10:]])
    with pytest.raises(ValueError, match="workers=0; expected at least 1"):
        Predictor.from_run(workdir, workers=0)


def test_overrides_flag_images_as_eval_does(workdir):
    predictor = Predictor.from_run(workdir, {"eval.binary_from": 1, "eval.flag_threshold": 0.6})
    out = predictor(list(_forms(2).values()))
    np.testing.assert_array_equal(out["flagged"], out["probs"][:, 1:].sum(-1) >= 0.6)
    assert out["flagged"].dtype == bool
    with pytest.raises(ValueError, match="do not fit the run's config.json.*flag_treshold"):
        Predictor.from_run(workdir, {"eval.flag_treshold": 0.6})
    nested = Predictor.from_run(workdir, {"eval": {"binary_from": 1, "flag_threshold": 0.6}})
    np.testing.assert_array_equal(nested(list(_forms(2).values()))["flagged"], out["flagged"])


@pytest.mark.parametrize("image, message", [
    (np.zeros((16, 16, 3), np.float32), "dtype float32; expected uint8 or uint16"),
    (np.zeros((16, 16, 2), np.uint8), r"shape \(16, 16, 2\); expected one image"),
    (np.zeros((0, 16), np.uint8), r"shape \(0, 16\)"),
    ("/nowhere/part.png", "does not exist"),
])
def test_bad_images_are_named(workdir, image, message):
    predictor = Predictor.from_run(workdir)
    with pytest.raises((ValueError, FileNotFoundError), match=f"image 1: .*{message}|image 1 has {message}"):
        predictor([np.zeros((16, 16), np.uint8), image])


def test_an_item_that_is_no_image_is_named_with_the_forms_expected(workdir):
    """None, a number or bytes in the list: its index and the forms an image takes, not NumPy's "shape ()"."""
    predictor = Predictor.from_run(workdir)
    for item in (None, 3, b"\x89PNG"):
        with pytest.raises(ValueError, match=rf"^image 1 is not an image \(type {type(item).__name__}\); expected a "
                                             r"path to an image file, or pixels: a \(height, width\) or \(height, "
                                             r"width, channels\) uint8/uint16 array"):
            predictor([np.zeros((16, 16), np.uint8), item])


def test_a_station_reads_16_bit_frames_with_the_runs_bit_depth(workdir, tmp_path):
    """The bit depth the run's training images were read with (train_set.json) applies to new frames too, and
    another one is refused rather than ignored."""
    station = tmp_path / "station"
    shutil.copytree(workdir, station)
    for name, edit in (("train_set.json", lambda d: {**d, "bit_depth": 12}),  # as a run trained with bit_depth 12
                       ("config.json", lambda d: {**d, "data": {**d["data"], "bit_depth": 12}})):
        (station / name).write_text(json.dumps(edit(json.loads((station / name).read_text()))))
    mono12 = np.random.default_rng(3).integers(0, 4096, (16, 16), dtype=np.uint16)
    np.testing.assert_array_equal(Predictor.from_run(station).pixels(mono12)[..., 0], mono12 >> 4)
    np.testing.assert_array_equal(Predictor.from_run(workdir).pixels(mono12)[..., 0], mono12 >> 8)
    with pytest.raises(ValueError, match=r"config.data.bit_depth=12 but the run .* trained on images read with "
                                         r"bit_depth 0 \(its train_set.json\)"):
        Predictor.from_run(workdir, {"data.bit_depth": 12})
    with pytest.raises(ValueError, match=r"config.data.bit_depth=0 but .* bit_depth 12 .*--config.data.bit_depth=12"):
        run.Experiment.for_eval(make_tiny_config("/nowhere"), station)  # evaluating, as predicting
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(mono12).save(folder / "mono12.png")
    station_config = Predictor.from_run(station).config
    csv_path = run.Experiment.for_eval(station_config, station, predict_only=True).predict_folder(folder)
    with open(csv_path) as f:
        row = next(csv.DictReader(f))
    np.testing.assert_allclose([float(row[f"p_{c}"]) for c in "abc"],
                               Predictor.from_run(station)([mono12])["probs"][0], atol=6e-5)  # read at 12 bits too
    older = tmp_path / "older"  # trained before data.bit_depth: no train_set.json, so it read its images at 0
    shutil.copytree(workdir, older)
    (older / "train_set.json").unlink()
    with pytest.raises(ValueError, match=r"config.data.bit_depth=12 but .* bit_depth 0"):
        Predictor.from_run(older, {"data.bit_depth": 12})
    assert not (older / "train_set.json").exists()


def test_one_image_not_in_a_list_and_runs_without_checkpoints_are_refused(workdir, tmp_path):
    predictor = Predictor.from_run(workdir)
    for one in (np.zeros((16, 16), np.uint8), np.zeros((16, 16, 3), np.uint8), jnp.zeros((16, 16, 3)),
                np.zeros((20, 16, 2), np.uint8), np.zeros((6, 16, 5), np.uint8), "part.png"):
        with pytest.raises(ValueError, match=r"pass \[image\]"):
            predictor(one)
    gray_batch = np.random.default_rng(4).integers(0, 256, (2, 16, 16, 1), dtype=np.uint8)
    np.testing.assert_array_equal(predictor(gray_batch)["probs"], predictor(list(gray_batch[..., 0]))["probs"])
    with pytest.raises(FileNotFoundError, match="config.json"):
        Predictor.from_run(tmp_path)
    (tmp_path / "config.json").write_text((workdir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        Predictor.from_run(tmp_path)
    config = json.loads((workdir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "task": "pretraining"}))
    with pytest.raises(ValueError, match="'pretraining' run predicts no classes"):  # named before any restore
        Predictor.from_run(tmp_path)


def test_frame_map_of_a_classifier_is_refused(workdir):
    """A classifier makes no anomaly maps: frame_map says what it needs and what the classifier gives instead."""
    with pytest.raises(ValueError, match=r"frame_map needs an anomaly-detection run \(MambaAD or SNARM\), and this is "
                                         r"a memorymamba classifier: its predictions are per image \('probs' and "
                                         r"'predicted'\)"):
        Predictor.from_run(workdir).frame_map(np.zeros((16, 16), np.float32), 40, 30)


def test_latency_benchmark_times_the_predictor_on_frames(workdir, tmp_path, capsys):
    """benchmarks/predict_latency.py on the tiny run: one row per batch length, printed and appended as JSON."""
    rows_path = tmp_path / "latency.jsonl"
    predict_latency.main(["--run", str(workdir), "--batches", "1,5", "--calls", "2", "--frame", "40x30",
                          "--workers", "2", "--json", str(rows_path)])
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    assert [(r["batch"], r["frame"], r["size"], r["workers"]) for r in rows] == [(1, "40x30", 16, 2),
                                                                                 (5, "40x30", 16, 2)]
    for row in rows:
        assert row["call_ms"] > 0 and row["preprocess_ms"] > 0
        assert row["images_per_s"] == pytest.approx(1e3 * row["batch"] / row["call_ms"])
    assert "call ms" in capsys.readouterr().out
    with pytest.raises(argparse.ArgumentTypeError, match="expected HEIGHTxWIDTH"):
        predict_latency.frame_shape("1024")
