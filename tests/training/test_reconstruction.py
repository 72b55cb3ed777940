"""Reconstruction AD (MambaAD) end to end on a tiny model and synthetic ELPV defects at 64 px: learning, the frozen
encoder, exact resume, evaluation outputs, folder prediction, pretrained encoder loading and bad input."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs.common import finalize
from configs.mambaad_common import mambaad_config, set_batch_size
from ssm_jax.data import Record, Source, replicas, synthetic_source
from ssm_jax.data.common import ANOMALY
from ssm_jax.inference import Predictor
from ssm_jax.training import reconstruction, run
from ssm_jax.training.mesh import make_mesh
from ssm_jax.training.optim import make_optimizer
from tests.training.crash import crash_during_step

ROOT = Path(__file__).resolve().parents[2]


def make_tiny_config(**train):
    """MambaAD with a ResNet18 encoder and a 2-2-2-2 decoder (2 scan directions) on 64 px synthetic ELPV defects."""
    config = mambaad_config("synthetic", None, epochs=100, image_size=64, bases=("elpv",), num_train=16, num_test=8,
                            anomaly_fraction=0.5, seed=0)
    config.model.update(encoder="resnet18", decoder_dims=(64, 256, 128, 64), decoder_depths=(2, 2, 2, 2), d_state=4,
                        ssm_ratio=1.0, directions=2, scan_impl="sequential")
    set_batch_size(config, 8)
    config.eval.num_overlays = 4
    config.train.update(log_every=1, checkpoint_every=3, max_steps=6)
    config.train.update(train)
    return finalize(config)


def _params(state):
    return jax.tree.map(np.asarray, jax.device_get(state.params))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(initial params, experiment after 6 steps and evaluation, its summary)."""
    workdir = tmp_path_factory.mktemp("straight")
    experiment = run.Experiment(make_tiny_config(), workdir)
    initial = _params(experiment.state)
    experiment.train()
    return initial, experiment, experiment.evaluate()


def test_training_lowers_loss_and_writes_outputs(trained):
    _, experiment, summary = trained
    workdir = experiment.workdir
    log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert np.mean([r["loss"] for r in log[-2:]]) < 0.8 * np.mean([r["loss"] for r in log[:2]]), log
    for name in ("config.json", "training_curves.png", "eval/metrics.json", "eval/metrics.md", "eval/scores.csv",
                 "eval/roc_pr.png", "eval/overlays/elpv.png"):
        assert (workdir / name).is_file(), name
    metrics = json.loads((workdir / "eval/metrics.json").read_text())
    assert set(metrics["per_category"]) == {"elpv"} and metrics["num_images"] == 8
    assert set(metrics["mean"]) == {"i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "p_aupro", "mad"}
    assert metrics["mean"] == pytest.approx(summary["mean"])
    table = (workdir / "eval/metrics.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| elpv |") and "–" not in table[2]
    with (workdir / "eval/scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["label"] for r in rows} == {"0", "1"}
    assert all(np.isfinite(float(r["score"])) for r in rows)


def test_a_restored_run_does_not_read_the_encoder_weights_file(trained, tmp_path):
    """The checkpoint holds the encoder: an inspection station (or a resume elsewhere) needs no resnet34.pth."""
    _, experiment, _ = trained
    config = experiment.config.copy_and_resolve_references()
    config.model.encoder_weights = str(tmp_path / "not on this machine" / "resnet18.pth")
    station = run.Experiment.for_eval(config, experiment.workdir, predict_only=True)
    for a, b in zip(jax.tree.leaves(_params(experiment.state)), jax.tree.leaves(_params(station.state))):
        np.testing.assert_array_equal(a, b)


def test_encoder_is_frozen_and_decoder_trained(trained):
    initial, experiment, _ = trained
    final = _params(experiment.state)
    for a, b in zip(jax.tree.leaves(initial["encoder"]), jax.tree.leaves(final["encoder"])):
        np.testing.assert_array_equal(a, b)
    for part in ("bottleneck", "decoder"):
        changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(initial[part]),
                                                             jax.tree.leaves(final[part]))]
        assert np.mean(changed) > 0.9, part
    stats = jax.device_get(experiment.state.model_state["batch_stats"])
    assert not np.allclose(stats["bottleneck"]["bn1"]["mean"], 0.0)  # trained batch statistics were kept


@pytest.mark.slow  # a third MambaAD training run (the classification and pretraining resume tests run by default)
def test_resume_after_interrupt_equals_uninterrupted(trained, tmp_path, monkeypatch, capsys):
    _, straight, _ = trained
    config = make_tiny_config()
    crash_during_step(monkeypatch, reconstruction)  # dies during step 5, after the checkpoint at step 3
    with pytest.raises(KeyboardInterrupt):
        run.Experiment(config, tmp_path).train()
    assert "encoder_weights is empty" in capsys.readouterr().err  # a fresh start with a random encoder says so
    monkeypatch.undo()
    resumed = run.Experiment(config, tmp_path)
    resumed.train()
    assert "encoder_weights is empty" not in capsys.readouterr().err  # the resumed run holds its encoder
    for a, b in zip(jax.tree.leaves(_params(straight.state)), jax.tree.leaves(_params(resumed.state))):
        np.testing.assert_array_equal(a, b)
    stats = [jax.device_get(e.state.model_state) for e in (straight, resumed)]
    for a, b in zip(jax.tree.leaves(stats[0]), jax.tree.leaves(stats[1])):
        np.testing.assert_array_equal(a, b)


def test_predictor_gives_the_evaluations_scores_and_maps(trained, tmp_path):
    """ssm_jax.inference.Predictor on the run's own test images, as arrays, against the evaluation's pipeline."""
    _, experiment, _ = trained
    source = experiment.test_source
    expected = experiment._predict(source)
    order = np.argsort(expected["indices"])
    pixels = [source.load(record, 64)["image"] for record in source]
    out = Predictor(experiment)(pixels)
    np.testing.assert_allclose(out["scores"], expected["scores"][order], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["maps"], expected["maps"][order].astype(np.float32))
    assert out["maps"].shape == (len(source), 64, 64) and "flagged" not in out


def test_maps_are_laid_on_their_frames_where_the_model_saw_them(trained, tmp_path):
    """frame_map: the whole frame without a centre crop; with crop 0.8 at 64 px (resized to 80, rows and columns
    8..72 kept) the map covers rows 4..36 and columns 6..54 of a 40 x 60 frame, NaN around."""
    workdir = trained[1].workdir
    anomaly_map = np.random.default_rng(5).random((64, 64)).astype(np.float32)
    expected = np.asarray(Image.fromarray(anomaly_map, mode="F").resize((30, 40), Image.BILINEAR))
    np.testing.assert_array_equal(Predictor.from_run(workdir).frame_map(anomaly_map, 40, 30), expected)
    cropped = tmp_path / "cropped"
    shutil.copytree(workdir, cropped)
    saved = json.loads((cropped / "train_set.json").read_text())
    (cropped / "train_set.json").write_text(json.dumps({**saved, "center_crop": 0.8}))
    placed = Predictor.from_run(cropped).frame_map(np.ones((64, 64), np.float32), 40, 60)
    scored = np.zeros((40, 60), bool)
    scored[4:36, 6:54] = True
    np.testing.assert_array_equal(np.isnan(placed), ~scored)
    np.testing.assert_allclose(placed[scored], 1.0, rtol=1e-6)


@pytest.mark.slow  # a fourth MambaAD model built for folder prediction
def test_predict_folder_writes_scores_and_overlays(trained, tmp_path):
    _, experiment, _ = trained
    folder = tmp_path / "cells"
    folder.mkdir()
    source = synthetic_source(None, "test", bases=("elpv",), num_test=3, seed=1)
    for i in range(3):
        Image.fromarray(source.load(source[i], 64)["image"]).save(folder / f"cell{i}.png")
    out = experiment.predict_folder(folder)
    lines = out.read_text().splitlines()
    assert out.name == "predict_cells.csv" and lines[0] == "path,score" and len(lines) == 4
    assert lines[1].startswith(str(folder / "cell0.png"))
    assert (out.parent / "predict_cells.png").is_file()


def test_folder_overlays_leave_out_an_image_moved_since_its_prediction(tmp_path, monkeypatch):
    """The overlays read their images through ``Source.load_shown``: a file gone after its prediction is left out
    with a warning and the other picked rows drawn; the CSV keeps its row."""
    for i in range(3):
        Image.fromarray(np.full((16, 16), 60 * i, np.uint8)).save(tmp_path / f"cell{i}.png")
    cells = Source([Record(str(tmp_path / f"cell{i}.png"), 0) for i in range(3)], ["good", "anomalous"], task=ANOMALY)
    (tmp_path / "cell1.png").unlink()
    drawn = {}
    monkeypatch.setattr(reconstruction.viz, "save_anomaly_overlays",
                        lambda images, maps, path, **kw: drawn.update(images=images, scores=kw["scores"]))
    predictions = {"scores": np.array([0.3, 0.9, 0.5]), "maps": np.zeros((3, 8, 8), np.float32),
                   "indices": np.arange(3)}
    with pytest.warns(UserWarning, match="predict_moved.png leaves out .*cell1.png"):
        out = reconstruction.write_folder_predictions(predictions, cells, tmp_path, "moved", num_overlays=2)
    assert len(out.read_text().splitlines()) == 4
    assert drawn["scores"].tolist() == [0.5] and int(drawn["images"][0, 0, 0, 0]) == 120


def test_overlays_tell_a_defect_without_mask_from_a_clean_part(tmp_path, monkeypatch):
    """With masks drawn, a defective image annotated at image level only says so over its empty mask panel."""
    for i in range(3):
        Image.fromarray(np.full((16, 16), 60 * i, np.uint8)).save(tmp_path / f"part{i}.png")
    parts = Source([Record(str(tmp_path / f"part{i}.png"), int(i > 0), defect=None if i == 0 else "dent")
                    for i in range(3)], ["good", "anomalous"], task=ANOMALY)
    drawn = {}
    monkeypatch.setattr(reconstruction.viz, "save_anomaly_overlays", lambda *a, **kw: drawn.update(kw))
    predictions = {"scores": np.array([0.1, 0.9, 0.5]), "maps": np.zeros((3, 8, 8), np.float32),
                   "masks": np.zeros((3, 8, 8), bool), "labels": np.array([0, 1, 1]),
                   "has_mask": np.array([False, True, False]), "indices": np.arange(3)}
    predictions["masks"][1, 2:4, 2:4] = True
    reconstruction.save_overlays(parts, predictions, [0, 1, 2], tmp_path / "o.png", with_masks=True)
    assert drawn["mask_title"] == ["ground truth", "ground truth", "no mask (image-level label)"]


def test_pretrained_encoder_is_loaded_without_layer4(tmp_path):
    torch = pytest.importorskip("torch")
    from ssm_jax.convert import from_torch
    from tests.convert.torch_resnet import TorchResNet

    torch.manual_seed(0)
    net = TorchResNet("basic", (2, 2, 2, 2))  # a full torchvision-style ResNet18, layer4 and fc included
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    config = make_tiny_config()
    tx = make_optimizer(config.optim, 10, frozen=reconstruction.FROZEN)
    state = reconstruction.create_state(run.build_model(config), tx, jax.random.PRNGKey(0), 64, make_mesh(),
                                        encoder_weights=str(path))
    _, expected = from_torch("resnet18", str(path))
    params, stats = _params(state)["encoder"], jax.device_get(state.model_state["batch_stats"]["encoder"])
    assert "layer4_0" in expected["params"] and "layer4_0" not in params
    np.testing.assert_array_equal(params["layer3_1"]["conv2"]["kernel"],
                                  expected["params"]["layer3_1"]["conv2"]["kernel"])
    np.testing.assert_array_equal(stats["bn1"]["mean"], expected["batch_stats"]["bn1"]["mean"])
    cut = tmp_path / "resnet18_to_layer3.pth"  # a backbone saved without the stage MambaAD does not use
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith(("layer4.", "fc."))}, cut)
    state = reconstruction.create_state(run.build_model(config), tx, jax.random.PRNGKey(0), 64, make_mesh(),
                                        encoder_weights=str(cut))
    np.testing.assert_array_equal(_params(state)["encoder"]["layer3_1"]["conv2"]["kernel"],
                                  params["layer3_1"]["conv2"]["kernel"])
    wrong = tmp_path / "resnet50.pth"
    torch.save(TorchResNet("bottleneck", (3, 4, 6, 3)).state_dict(), wrong)
    with pytest.raises(ValueError, match=r"encoder_weights='.*resnet50.pth' does not hold the resnet18 stages 1-3"):
        reconstruction.create_state(run.build_model(config), tx, jax.random.PRNGKey(0), 64, make_mesh(),
                                    encoder_weights=str(wrong))


def test_missing_encoder_weights_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nowhere" / "resnet34.pth"
    result = subprocess.run([sys.executable, "train.py", "--config=configs/mambaad_elpv.py:synthetic_cpu",
                             f"--workdir={tmp_path / 'run'}", f"--config.model.encoder_weights={missing}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: config.model.encoder_weights=") and str(missing) in last
    assert not (tmp_path / "run" / "checkpoints").exists()


def _fake_predictions(source, size=32, seed=0):
    """Predictions for every example of ``source``: anomalous images score higher, maps peak on their masks."""
    rng = np.random.default_rng(seed)
    n = len(source)
    indices = np.arange(n)  # gather_predictions puts rows in source order
    labels = source.labels[indices]
    masks = np.zeros((n, size, size), bool)
    masks[labels == 1, 8:16, 8:16] = True
    maps = (rng.random((n, size, size)) + 2 * masks).astype(np.float16)
    return {"maps": maps, "scores": maps.reshape(n, -1).max(1).astype(np.float32) + labels, "labels": labels,
            "masks": masks, "has_mask": np.ones(n, bool), "indices": indices}


def test_evaluation_outputs_from_synthetic_predictions(tmp_path):
    cells = synthetic_source(None, "test", bases=("elpv",), num_test=6, seed=0)
    paths = [r.path for r in cells.records]
    labels = [0, 1, 0, 1, 0, 1]
    records = [Record(p, y, category, "crack" if y else "good", mask_path=None)
               for p, y, category in zip(paths, labels, ["mono"] * 3 + ["poly"] * 3)]
    source = Source(records, ["good", "anomalous"], task=ANOMALY)
    predictions = _fake_predictions(source)
    predictions["has_mask"] = predictions["labels"] == 0  # poly and mono anomalies unannotated: image metrics only
    predictions["has_mask"][predictions["indices"] == 1] = True  # ... except mono's defect
    summary = reconstruction.write_evaluation(dict(predictions), source, tmp_path, num_overlays=2)
    assert summary["per_category"]["mono"]["p_auroc"] == pytest.approx(1.0)
    assert not {"p_auroc", "p_f1max_threshold"} & set(summary["per_category"]["poly"])
    defect = predictions["maps"][predictions["indices"] == 1][0][predictions["masks"][predictions["indices"] == 1][0]]
    cut = summary["per_category"]["mono"]["p_f1max_threshold"]
    assert cut == float(defect.min())  # the highest cut keeping every defect pixel, and nothing else (F1 1)
    assert f"defect regions, cut at pixel F1-max: map >= mono {cut:.6g} (p_f1max_threshold" in \
        reconstruction.format_report(summary)
    table = (tmp_path / "metrics.md").read_text().splitlines()
    assert table[0] == ("| category | I-AUROC | I-AP | I-F1max | P-AUROC | P-AP | P-F1max | P-AUPRO | mAD |")
    assert table[2].startswith("| mono | 100.0 | 100.0 | 100.0 | 100.0 |")
    assert table[3] == "| poly | 100.0 | 100.0 | 100.0 | – | – | – | – | – |"
    assert table[4].startswith("| **mean** | 100.0 |")
    with (tmp_path / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == paths and [r["category"] for r in rows] == ["mono"] * 3 + ["poly"] * 3
    assert [r["index"] for r in rows] == ["0", "1", "2", "3", "4", "5"]  # ties a row to its overlay's "#i"
    name = os.path.basename(paths[1])
    assert reconstruction._overlay_title(1, records[1], labelled=True) == f"#1 {name}\ncrack"
    assert reconstruction._overlay_title(0, records[0], labelled=True) == f"#0 {os.path.basename(paths[0])}\ngood"
    assert reconstruction._overlay_title(1, records[1], labelled=False) == f"#1 {name}"  # --predict_dir: no truth
    assert [r["defect"] for r in rows][:2] == ["good", "crack"]
    assert json.loads((tmp_path / "metrics.json").read_text())["per_category"]["poly"]["i_auroc"] == 1.0
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["mono.png", "poly.png"]
    assert (tmp_path / "roc_pr.png").is_file()
    report = reconstruction.format_report(summary)
    assert "poly" in report and "6 test images (3 anomalous)" in report


def test_overlay_file_names_keep_the_category_name_less_what_file_systems_refuse():
    """Spaces and other scripts stay (so "外壳 部品" and "外壳_部品" get two files); separators, Windows' reserved
    characters and trailing dots or spaces become "_" or go."""
    names = {"外壳 部品": "外壳 部品", "外壳_部品": "外壳_部品", "screw": "screw", 'a/b\\c:d*e?f"g<h>i|j': "a_b_c_d_e_f_g_h_i_j",
             "tab\tname.": "tab_name", "": "all"}
    assert {name: reconstruction._file_name(name) for name in names} == names


def test_overlay_rows_mix_anomalous_and_normal_deterministically():
    labels = np.array([1, 0, 1, 1, 0, 0, 0, 1, 0, 0])
    categories = np.array(["a"] * 8 + ["b"] * 2)
    rows = reconstruction.overlay_rows(labels, categories, per_category=4)
    np.testing.assert_array_equal(rows["a"], [0, 7, 1, 6])  # 2 anomalous (spread), then 2 normal (spread)
    np.testing.assert_array_equal(rows["b"], [8, 9])  # no anomalous images: normals fill the quota


def _reference_cut(labels, scores, max_fpr):
    """The highest threshold of the most recall with at most ``max_fpr`` of the normals flagged, by trying every
    score as the cut (float64, independent of ``metrics.curves``)."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, np.float64)
    best = (0.0, None)  # (recall, threshold): flagging nothing
    for t in np.sort(np.unique(scores))[::-1]:
        fpr, recall = np.mean(scores[~labels] >= t), np.mean(scores[labels] >= t)
        if fpr <= max_fpr and recall > best[0]:
            best = (recall, t)
    return best


def test_evaluation_reports_the_score_cuts_and_flags_images_at_a_threshold(tmp_path):
    cells = synthetic_source(None, "test", bases=("elpv",), num_test=24, seed=0)
    rng = np.random.default_rng(3)
    labels = rng.permutation([0] * 14 + [1] * 10)
    categories = ["mono"] * 12 + ["poly"] * 12
    source = Source([Record(r.path, int(y), c, "crack" if y else "good", mask_path=None)
                     for r, y, c in zip(cells.records, labels, categories)], ["good", "anomalous"], task=ANOMALY)
    predictions = _fake_predictions(source)
    predictions["has_mask"][:] = False
    predictions["scores"] = (rng.normal(size=24) + 1.2 * predictions["labels"]).astype(np.float32)  # overlapping
    threshold = float(np.sort(predictions["scores"])[12])
    summary = reconstruction.write_evaluation(dict(predictions), source, tmp_path, num_overlays=2,
                                              flag_threshold=threshold)

    by_index = np.empty(24, np.float32)
    by_index[predictions["indices"]] = predictions["scores"]
    for name, keep in (("pooled", np.ones(24, bool)), ("mono", np.arange(24) < 12), ("poly", np.arange(24) >= 12)):
        cuts = summary["at_false_alarms"]["pooled" if name == "pooled" else "per_category"]
        cuts = cuts if name == "pooled" else cuts[name]
        assert list(cuts) == ["1%", "5%", "10%"]
        for rate, point in cuts.items():
            recall, cut = _reference_cut(labels[keep], by_index[keep], float(rate[:-1]) / 100)
            assert point["recall"] == pytest.approx(recall)
            assert (point["threshold"] is None) if cut is None else point["threshold"] == pytest.approx(cut)
    flagged = by_index >= threshold
    assert summary["at_flag_threshold"] == {"threshold": threshold,
                                            "recall": pytest.approx(flagged[labels == 1].mean()),
                                            "fpr": pytest.approx(flagged[labels == 0].mean())}
    with (tmp_path / "scores.csv").open() as f:
        assert [int(r["flagged"]) for r in csv.DictReader(f)] == flagged.astype(int).tolist()
    report = reconstruction.format_report(summary)
    point = summary["at_false_alarms"]["pooled"]["10%"]
    assert (f"at most 10% false alarms: flag score >= {point['threshold']:.6g}: recall "
            f"{point['recall']:.4f}") in report
    assert f"at eval.flag_threshold: flag score >= {threshold:.6g}: recall {flagged[labels == 1].mean():.4f}" in report

    out = reconstruction.write_folder_predictions(dict(predictions), source, tmp_path, "parts", num_overlays=2,
                                                  flag_threshold=threshold)
    with out.open() as f:
        assert [int(r["flagged"]) for r in csv.DictReader(f)] == flagged.astype(int).tolist()
    unread = {k: v[1:] for k, v in predictions.items()}  # the first row's image was skipped as unreadable
    missing = int(predictions["indices"][0])
    summary = reconstruction.write_evaluation(unread, source, tmp_path / "unread", num_overlays=2)
    assert summary["num_unreadable"] == 1
    assert f"23 test images ({10 - labels[missing]} anomalous); 1 unreadable, skipped" in \
        reconstruction.format_report(summary)
    out = reconstruction.write_folder_predictions(unread, source, tmp_path / "unread", "parts", num_overlays=2,
                                                  flag_threshold=threshold)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [r.path for r in source.records]  # one row per image, in order
    assert rows[missing]["score"] == rows[missing]["flagged"] == "" and all(r["score"] for r in rows[:missing])
    plain = reconstruction.write_evaluation(dict(predictions), source, tmp_path / "plain", num_overlays=2)
    assert "at_flag_threshold" not in plain and "at eval.flag_threshold" not in reconstruction.format_report(plain)
    with (tmp_path / "plain" / "scores.csv").open() as f:
        assert "flagged" not in next(csv.reader(f))


def test_a_mistake_in_the_test_split_is_named_before_training(tmp_path):
    """Not after the last step: the test split's layout is read when the run is built."""
    root = replicas.write_replica("mvtec", str(tmp_path), per_class=2)
    crack = os.path.join(root, "grid", "test", "crack")
    os.rename(os.path.join(crack, "001.png"), os.path.join(crack, "901.png"))
    config = mambaad_config("mvtec", root, epochs=1)
    with pytest.raises(FileNotFoundError, match=r"crack/001_mask.png' has no image"):
        run.Experiment(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    os.rename(os.path.join(crack, "901.png"), os.path.join(crack, "001.png"))
    Image.new("L", (7, 7)).save(os.path.join(root, "grid", "ground_truth", "crack", "001_mask.png"))
    with pytest.raises(ValueError, match=r"crack/001_mask.png' is 7x7 but its image .* is 16x16"):
        run.Experiment(config, tmp_path / "run")  # a mask of another size too: read from the headers, before training
    assert not (tmp_path / "run" / "checkpoints").exists()
