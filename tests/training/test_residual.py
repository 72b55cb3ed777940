"""Residual AD (SNARM) family: the bank (coreset vs a NumPy greedy reference, rows and image indices exact, streamed
in any batch order, capped by max_patches), its layout, and a tiny model end to end at 64 px on synthetic ELPV
defects: the loss falls, the encoder stays frozen, the bank is in the state and checkpoints, resume is exact, and
the evaluation writes MambaAD's outputs."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.common import finalize
from configs.snarm_common import snarm_config
from ssm_jax.inference import Predictor
from ssm_jax.models.patch_bank import random_projection
from ssm_jax.models.snarm import build_snarm, snarm_model_config
from ssm_jax.training import residual, run
from ssm_jax.training.mesh import shard_batch
from tests.models.test_patch_bank import _greedy_reference
from tests.training.crash import crash_during_step


def make_tiny_config(**train):
    """SNARM with ResNet18 features (32 channels, 8 x 8 at 64 px), 2 branches x 2 scans, one block; 16 training and
    8 test images of synthetic ELPV defects; 6 steps of batch 8."""
    config = snarm_config("synthetic", None, image_size=64, bases=("elpv",), num_train=16, num_test=8,
                          anomaly_fraction=0.5, seed=0)
    config.model.update(encoder="resnet18", feature_dim=32, embed_dim=16, depth=1, atrous_rates=(1, 2), directions=2,
                        scan_impl="sequential")
    config.bank.coreset_ratio = 0.25
    config.optim.lr = 1e-2
    config.eval.num_overlays = 4
    config.train.update(batch_size=8, eval_batch_size=8, log_every=1, checkpoint_every=3, max_steps=6)
    config.train.update(train)
    return finalize(config)


def _feature_batches(features, order, batch_size):
    """A ``batches()`` factory over (N, h, w, C) "images" that are their own features, in source ``order``."""
    def batches():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield {"image": features[idx], "index": idx}
    return batches


@pytest.mark.parametrize("max_patches", [None, 100])
def test_bank_is_the_greedy_coreset_of_the_training_patches(max_patches):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((10, 4, 4, 12)).astype(np.float32)  # 10 images, 16 patches each
    rows = features.reshape(-1, 12)
    kept = None if max_patches is None else np.sort(rng.choice(160, max_patches, replace=False))
    layout = residual.BankLayout(10, (4, 4), 12, kept, 20)
    order = rng.permutation(10)  # batches in any order, of uneven size
    bank, image_index, chosen = residual.build_bank(lambda x: x, _feature_batches(features, order, 3), layout,
                                                    projection_dim=5, seed=1)
    candidates = np.arange(160) if kept is None else kept
    projected = np.asarray(random_projection(rows[candidates], 5, seed=1))
    start = int(np.flatnonzero(candidates == chosen[0])[0])
    np.testing.assert_array_equal(chosen, candidates[_greedy_reference(projected, 20, start)])
    np.testing.assert_array_equal(np.asarray(bank), rows[chosen])
    np.testing.assert_array_equal(np.asarray(image_index), chosen // 16)


def test_full_bank_and_missing_images():
    features = np.random.default_rng(1).standard_normal((4, 2, 2, 3)).astype(np.float32)
    layout = residual.BankLayout(4, (2, 2), 3, None, 16)
    bank, image_index, _ = residual.build_bank(lambda x: x, _feature_batches(features, np.arange(4), 4), layout)
    np.testing.assert_array_equal(np.asarray(bank), features.reshape(-1, 3))
    np.testing.assert_array_equal(np.asarray(image_index), np.repeat(np.arange(4), 4))
    with pytest.raises(ValueError, match="must cover every training image once"):
        residual.build_bank(lambda x: x, _feature_batches(features, np.arange(3), 4), layout)


@pytest.mark.parametrize("size", [20, 160])  # a coreset, and every patch
def test_unreadable_images_left_out_give_no_rows_and_the_bank_keeps_its_size(size):
    """With ``data.skip_corrupt`` an unreadable training image never comes in a batch: the bank draws from the images
    read (the coreset of their patches) and repeats rows where it has none, keeping the size eval.py computes."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((10, 4, 4, 12)).astype(np.float32)
    rows = features.reshape(-1, 12)
    layout = residual.BankLayout(10, (4, 4), 12, None, size)
    read = np.array([0, 1, 2, 4, 5, 6, 7, 8, 9])  # image 3 left out
    batches = _feature_batches(features, read, 3)
    with pytest.raises(ValueError, match="must cover every training image once"):
        residual.build_bank(lambda x: x, batches, layout, projection_dim=5, seed=1)
    bank, image_index, chosen = residual.build_bank(lambda x: x, batches, layout, projection_dim=5, seed=1,
                                                    missing_ok=True)
    bank, image_index = np.asarray(bank), np.asarray(image_index)
    assert bank.shape == (size, 12) and 3 not in image_index
    candidates = (read[:, None] * 16 + np.arange(16)).reshape(-1)
    if size < len(candidates):
        projected = np.asarray(random_projection(rows[candidates], 5, seed=1))
        start = int(np.flatnonzero(candidates == chosen[0])[0])
        np.testing.assert_array_equal(chosen, candidates[_greedy_reference(projected, size, start)])
        np.testing.assert_array_equal(bank, rows[chosen])
    else:  # image 3's 16 rows repeat rows of the images read
        np.testing.assert_array_equal(chosen, np.arange(160))
        owner = [np.flatnonzero((rows == row).all(axis=1)) // 16 for row in bank]
        assert all(len(o) == 1 and o[0] == i for o, i in zip(owner, image_index))
        np.testing.assert_array_equal(bank[:48], rows[:48])


def test_bank_layout():
    model = build_snarm(snarm_model_config(encoder="resnet18", feature_dim=32))
    bank = finalize(snarm_config("synthetic", None)).bank
    layout = residual.bank_layout(model, 64, 30, bank)
    assert (layout.grid, layout.channels, layout.num_kept, layout.size) == ((8, 8), 32, 1920, 192)
    bank.unlock()
    bank.update(max_patches=1000, coreset_ratio=1.0)
    capped = residual.bank_layout(model, 64, 30, bank, seed=3)
    assert capped.num_kept == capped.size == 1000 and np.all(np.diff(capped.kept) > 0)
    bank.coreset_ratio = 0.0
    with pytest.raises(ValueError, match="coreset_ratio=0.0 must lie in"):
        residual.bank_layout(model, 64, 30, bank)


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(initial params, experiment after 6 steps and evaluation, its summary)."""
    experiment = run.Experiment(make_tiny_config(), tmp_path_factory.mktemp("snarm"))
    initial = _host(experiment.state.params)
    experiment.train()
    return initial, experiment, experiment.evaluate()


@pytest.mark.slow  # SNARM trained end to end (the fixture): in the slow run, keeping CI's run short
def test_training_lowers_loss_and_writes_outputs(trained):
    _, experiment, summary = trained
    workdir = experiment.workdir
    log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    first, last = log[0], log[-1]
    assert last["loss"] < 0.9 * first["loss"] and last["loss_heads"] < 0.7 * first["loss_heads"], log
    for name in ("config.json", "training_curves.png", "eval/metrics.json", "eval/metrics.md", "eval/scores.csv",
                 "eval/roc_pr.png", "eval/overlays/elpv.png"):
        assert (workdir / name).is_file(), name
    metrics = json.loads((workdir / "eval/metrics.json").read_text())
    assert metrics["num_images"] == 8 and metrics["mean"] == pytest.approx(summary["mean"])
    assert set(metrics["mean"]) == {"i_auroc", "i_ap", "i_f1max", "p_auroc", "p_ap", "p_f1max", "p_aupro", "mad"}


@pytest.mark.slow  # SNARM trained end to end (the fixture): in the slow run, keeping CI's run short
def test_encoder_frozen_heads_trained_bank_in_state(trained):
    initial, experiment, _ = trained
    final = _host(experiment.state.params)
    for a, b in zip(jax.tree.leaves(initial["encoder"]), jax.tree.leaves(final["encoder"])):
        np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(initial["decoder"]),
                                                         jax.tree.leaves(final["decoder"]))]
    assert np.mean(changed) > 0.9
    bank = _host(experiment.state.model_state["bank"])
    assert bank["features"].shape == (256, 32)  # 16 images x 64 patches x coreset_ratio 0.25
    assert set(np.unique(bank["image_index"])) <= set(range(16)) and np.any(bank["features"])


@pytest.mark.slow  # SNARM trained end to end (the fixture): in the slow run, keeping CI's run short
def test_resume_after_interrupt_equals_uninterrupted(trained, tmp_path, monkeypatch):
    _, straight, _ = trained
    config = make_tiny_config()
    crash_during_step(monkeypatch, residual)  # dies during step 5, after the checkpoint at step 3
    with pytest.raises(KeyboardInterrupt):
        run.Experiment(config, tmp_path).train()
    monkeypatch.undo()
    resumed = run.Experiment(config, tmp_path)
    resumed.train()
    for a, b in zip(jax.tree.leaves(_host(straight.state.params)), jax.tree.leaves(_host(resumed.state.params))):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(_host(straight.state.model_state)),
                    jax.tree.leaves(_host(resumed.state.model_state))):
        np.testing.assert_array_equal(a, b)  # batch statistics and the bank


def test_a_training_split_grown_since_the_run_still_restores_it(trained):
    """Good parts added to the training folder after training: eval.py restores the run's bank, sized by the split it
    trained on (train_set.json), instead of calling the checkpoint damaged."""
    _, straight, _ = trained
    grown = make_tiny_config()
    with grown.unlocked():
        grown.data.source.num_train = 24
    station = run.Experiment.for_eval(grown, straight.workdir)
    for a, b in zip(jax.tree.leaves(_host(straight.state.model_state)),
                    jax.tree.leaves(_host(station.state.model_state))):
        np.testing.assert_array_equal(a, b)


def test_a_run_resumed_on_a_grown_split_keeps_the_record_that_shaped_its_bank(trained, tmp_path):
    """Training resumed after good parts were added keeps train_set.json as the bank was sized, so eval.py and
    prediction still restore the run (a rewritten record sized the bank anew: "checkpoint ... unreadable")."""
    _, straight, _ = trained
    workdir = tmp_path / "run"
    shutil.copytree(straight.workdir, workdir)
    grown = make_tiny_config()
    with grown.unlocked():
        grown.data.source.num_train = 24
    run.Experiment(grown, workdir).train()  # resumes at its last step
    assert json.loads((workdir / "train_set.json").read_text())["num_images"] == 16
    station = run.Experiment.for_eval(grown, workdir)
    for a, b in zip(jax.tree.leaves(_host(straight.state.model_state)),
                    jax.tree.leaves(_host(station.state.model_state))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # SNARM trained end to end (the fixture): in the slow run, keeping CI's run short
def test_bank_is_built_on_a_fresh_start_only(trained, tmp_path, monkeypatch, capfd):
    """A workdir with a checkpoint (resume, eval.py) takes the saved bank without building one first; the
    evaluation after the restore gives the trained run's metrics. A build shows a progress bar per pass."""
    _, straight, summary = trained
    calls, build = [], residual.build_bank
    monkeypatch.setattr(residual, "build_bank", lambda *args, **kwargs: calls.append(1) or build(*args, **kwargs))
    run.Experiment(straight.config, tmp_path)
    assert len(calls) == 1
    shown = capfd.readouterr().err
    assert "bank: encoding the training images" in shown and "bank: gathering the chosen patches" in shown
    restored = run.Experiment(straight.config, straight.workdir)
    assert len(calls) == 1 and "bank:" not in capfd.readouterr().err
    restored.restore_for_eval()
    for a, b in zip(jax.tree.leaves(_host(straight.state.model_state)),
                    jax.tree.leaves(_host(restored.state.model_state))):
        np.testing.assert_array_equal(a, b)
    assert restored.evaluate()["mean"] == pytest.approx(summary["mean"], rel=1e-6)


@pytest.mark.slow  # SNARM trained end to end (the fixture): in the slow run, keeping CI's run short
def test_predicting_without_the_training_data_restores_the_bank_from_its_saved_size(trained, tmp_path, monkeypatch):
    """The bank's row count follows the training split's size, which ``train_set.json`` keeps for prediction."""
    _, straight, _ = trained
    folder = tmp_path / "new"
    folder.mkdir()
    test = run.load_source(straight.config, "test")
    for i in range(3):
        Image.fromarray(test.load(test[i], 64)["image"]).save(folder / f"cell{i}.png")
    expected = straight.predict_folder(folder).read_text()

    def no_data(config, split):
        raise FileNotFoundError("the dataset is not on this machine")

    monkeypatch.setattr(run, "load_source", no_data)
    station = run.Experiment.for_eval(straight.config, straight.workdir, predict_only=True)
    for a, b in zip(jax.tree.leaves(_host(straight.state.model_state)),
                    jax.tree.leaves(_host(station.state.model_state))):
        np.testing.assert_array_equal(a, b)
    assert station.predict_folder(folder).read_text() == expected
    scores = Predictor.from_run(straight.workdir)(sorted(folder.iterdir()))["scores"]  # in a program, no data either
    assert [f"{s:.6g}" for s in scores] == [line.split(",")[1] for line in expected.splitlines()[1:]]


@pytest.mark.slow  # a second compile of the full train step
def test_gradient_accumulation_step(trained):
    _, experiment, _ = trained
    state = jax.tree.map(jnp.copy, experiment.state)  # the step donates its input state
    batch = shard_batch(next(iter(experiment.pipeline(experiment.train_source, train=True))), experiment.mesh)
    new, metrics = residual.make_train_step(experiment.config.loss, experiment.mesh, 2)(state, batch)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert set(metrics) == {"loss", "loss_heads", "loss_selector"}
    before, after = _host(experiment.state.params), _host(new.params)
    for a, b in zip(jax.tree.leaves(before["encoder"]), jax.tree.leaves(after["encoder"])):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before["decoder"]),
                                                         jax.tree.leaves(after["decoder"])))


def test_wrong_dataset_task_is_named(tmp_path):
    config = snarm_config("elpv", None, image_size=64)
    with pytest.raises(ValueError, match="config.task='residual' trains on anomaly datasets but 'elpv' is a "
                                         "classification dataset"):
        run.Experiment(finalize(config), tmp_path)


def test_eval_of_a_workdir_without_checkpoint_builds_and_writes_nothing(tmp_path, monkeypatch):
    """eval.py's path refuses a workdir that was never trained before building the model's state (SNARM would build
    its bank over the training set first) and leaves no empty ``checkpoints/`` behind."""
    monkeypatch.setattr(residual, "build_bank", lambda *args, **kwargs: pytest.fail("built a bank"))
    for workdir in (tmp_path / "never_made", tmp_path):
        with pytest.raises(FileNotFoundError, match=f"no checkpoint in {tmp_path}.*; train first"):
            run.Experiment.for_eval(make_tiny_config(), workdir)
    assert list(tmp_path.iterdir()) == []
