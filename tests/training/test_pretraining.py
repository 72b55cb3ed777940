"""Masked-image pretraining end to end on the replica dataset: the masked-pixel error falls, the outputs are
written, a resumed run equals an uninterrupted one, and a classifier starts from the pretrained backbone
(``config.train.init_from``) with its head fresh; bad ``init_from`` input gets clear errors."""

import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from configs.common import finalize
from ssm_jax.training import pretraining, run
from ssm_jax.training.init_from import copy_matching, own_evaluation, read_variables
from tests.training.conftest import flat_params, make_tiny_config
from tests.training.crash import crash_during_step


def pretraining_config(data_root, **train):
    config = ml_collections.ConfigDict(make_tiny_config(data_root, **train).to_dict())
    config.task = "pretraining"
    config.loss = ml_collections.ConfigDict({"mask_ratio": 0.5, "mask_patch": 8})
    del config["eval"]
    return finalize(config)


@pytest.fixture(scope="module")
def pretrained(folder_root, tmp_path_factory):
    """A 24-step pretraining run's workdir and evaluation summary."""
    workdir = tmp_path_factory.mktemp("mim")
    return workdir, run.train_and_evaluate(pretraining_config(folder_root, max_steps=24), workdir)


@pytest.mark.slow  # on a pretraining run (the fixture): in the slow run, keeping CI's run short
def test_pretraining_learns_and_writes_its_outputs(pretrained):
    workdir, summary = pretrained
    log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    first, last = np.mean([r["loss"] for r in log[:3]]), np.mean([r["loss"] for r in log[-3:]])
    assert last < first * 0.8, (first, last)
    for name in ("eval/metrics.json", "eval/reconstructions.png", "training_curves.png"):
        assert (workdir / name).is_file(), name
    assert 0 < summary["masked_l1"] < first and summary["num_images"] == len(summary["per_image"])


@pytest.mark.slow  # on a pretraining run (the fixture): in the slow run, keeping CI's run short
def test_eval_of_a_folder_writes_each_images_error(pretrained, folder_root):
    workdir, _ = pretrained
    experiment = run.Experiment(pretraining_config(folder_root, max_steps=24), workdir)
    experiment.restore_for_eval()
    folder = next(p for p in sorted(Path(folder_root).iterdir()) if p.is_dir())
    out = experiment.predict_folder(folder)
    lines = out.read_text().splitlines()
    assert lines[0] == "path,masked_l1" and len(lines) == 1 + len(list(folder.iterdir()))
    assert all(float(line.split(",")[1]) > 0 for line in lines[1:]) and out.with_suffix(".png").is_file()


def test_resumed_pretraining_equals_uninterrupted(folder_root, tmp_path, monkeypatch):
    """Killed during step 5 (after the checkpoint at step 3) and run again: the same parameters, the same masks."""
    config = pretraining_config(folder_root, max_steps=6, checkpoint_every=3)
    straight = run.Experiment(config, tmp_path / "straight")
    straight.train()
    crash_during_step(monkeypatch, pretraining)
    with pytest.raises(KeyboardInterrupt):
        run.Experiment(config, tmp_path / "resumed").train()
    monkeypatch.undo()
    resumed = run.Experiment(config, tmp_path / "resumed")
    resumed.train()
    a, b = flat_params(straight.state.params), flat_params(resumed.state.params)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # on a pretraining run (the fixture): in the slow run, keeping CI's run short
def test_classifier_starts_from_the_pretrained_backbone_with_a_fresh_head(pretrained, folder_root, tmp_path):
    workdir, _ = pretrained
    backbone = flat_params(read_variables(workdir)["params"]["backbone"])
    fresh = flat_params(run.Experiment(make_tiny_config(folder_root), tmp_path / "fresh").state.params)
    started = flat_params(run.Experiment(make_tiny_config(folder_root, init_from=str(workdir)),
                                         tmp_path / "ft").state.params)
    assert started.keys() == fresh.keys() and "mask_token" not in started
    moved = 0
    for name, value in started.items():
        if name.startswith("head/"):
            np.testing.assert_array_equal(value, fresh[name])
        else:
            np.testing.assert_array_equal(value, backbone[name])
            moved += not np.array_equal(value, fresh[name])
    # Pretraining moved most of them (the few that only the classification losses use, as the fine memory's
    # projection for InfoNCE, keep their initial values there too).
    assert moved > 0.8 * sum(not n.startswith("head/") for n in started), moved


def test_copy_matching_reports_what_it_left():
    params = {"a": {"w": np.zeros((2, 3))}, "b": np.zeros(4), "head": {"w": np.zeros((3, 2))}}
    source = {"backbone": {"a": {"w": np.ones((2, 3))}, "b": np.ones(5), "head": {"w": np.ones((3, 2))}}}
    out, report = copy_matching(params, source)
    np.testing.assert_array_equal(out["a"]["w"], np.ones((2, 3)))
    np.testing.assert_array_equal(out["b"], np.zeros(4))
    np.testing.assert_array_equal(out["head"]["w"], np.zeros((3, 2)))
    assert report == {"copied": 1, "excluded": ["head/w"], "missing": [], "mismatched": ["b (5,) != (4,)"]}


def test_copy_matching_into_a_wrapped_network_from_a_classifier():
    """Pretraining started from a classifier (``:mim`` after ``:fractal``): the classifier's top-level parameters go
    under the pretraining model's ``backbone``; its head stays excluded there, and the decoder is the model's own."""
    params = {"backbone": {"a": {"w": np.zeros((2, 3))}, "head": {"w": np.zeros((3, 2))}}, "decoder": np.zeros(4)}
    source = {"a": {"w": np.ones((2, 3))}, "head": {"w": np.ones((3, 2))}}
    out, report = copy_matching(params, source)
    np.testing.assert_array_equal(out["backbone"]["a"]["w"], np.ones((2, 3)))
    np.testing.assert_array_equal(out["backbone"]["head"]["w"], np.zeros((3, 2)))
    np.testing.assert_array_equal(out["decoder"], np.zeros(4))
    assert report == {"copied": 1, "excluded": ["backbone/head/w"], "missing": ["decoder"], "mismatched": []}


@pytest.mark.slow  # trains a classifier first: in the slow run, keeping CI's run short
def test_pretraining_starts_from_a_classifier(folder_root, tmp_path):
    classifier = tmp_path / "classifier"
    run.train_and_evaluate(make_tiny_config(folder_root, max_steps=2), classifier)
    trained = flat_params(read_variables(classifier)["params"])
    started = flat_params(run.Experiment(pretraining_config(folder_root, init_from=str(classifier)),
                                         tmp_path / "mim").state.params)
    inside = {name.removeprefix("backbone/"): value for name, value in started.items() if name.startswith("backbone/")}
    network = [name for name in trained if not name.startswith("head/")]
    assert network and set(network) <= set(inside)
    for name in network:
        np.testing.assert_array_equal(inside[name], trained[name])
    fresh = flat_params(run.Experiment(pretraining_config(folder_root), tmp_path / "fresh").state.params)
    assert all(np.array_equal(started[n], fresh[n]) for n in started if n.removeprefix("backbone/") not in network)


def test_own_evaluation_says_what_the_source_run_scored(tmp_path):
    """The line init_from prints about the run it copies from: a classifier's accuracy beside its largest class's
    share of the test set, a pretraining's masked-pixel error, or that there is no evaluation yet."""
    def run_with(name, summary):
        (tmp_path / name / "eval").mkdir(parents=True)
        (tmp_path / name / "eval" / "metrics.json").write_text(json.dumps(summary))
        return own_evaluation(tmp_path / name)

    fractal = {"acc": 0.0075, "num_images": 2000, "per_class": {f"ifs_{i}": {"support": 2.0} for i in range(1000)}}
    assert run_with("fractal", fractal) == ("its own test accuracy 0.75 % on 2,000 images of 1,000 classes (the "
                                            "largest class alone: 0.10 %)")
    elpv = {"acc": 0.7622, "num_images": 656,
            "per_class": {c: {"support": n} for c, n in zip(("p0", "p1_3", "p2_3", "p1"), (377, 74, 27, 178))}}
    assert run_with("elpv", elpv).endswith("76.22 % on 656 images of 4 classes (the largest class alone: 57.47 %)")
    assert run_with("mim", {"masked_l1": 0.12563, "masked_l1_std": 0.07, "num_images": 656}) == (
        "its own test masked-pixel error 0.1256 (L1, normalised units) on 656 images")
    assert own_evaluation(tmp_path / "running") == (f"no evaluation of its own yet ({tmp_path / 'running' / 'eval'}"
                                                    f"/metrics.json not found)")
    (tmp_path / "mim" / "eval" / "metrics.json").write_text('{"masked_l1": 0.1')  # cut short: said, not raised
    assert own_evaluation(tmp_path / "mim").startswith(f"its own evaluation {tmp_path / 'mim' / 'eval'}/metrics.json "
                                                        f"is unreadable (")


def test_bad_init_from_is_named(folder_root, tmp_path):
    """A missing workdir, and a task that does not take init_from (refused before the path is read)."""
    with pytest.raises(FileNotFoundError, match="no checkpoints folder"):
        run.Experiment(make_tiny_config(folder_root, init_from=str(tmp_path / "nowhere")), tmp_path / "a")
    anomaly = ml_collections.ConfigDict(make_tiny_config(folder_root, init_from=str(tmp_path / "nowhere")).to_dict())
    anomaly.task = "anomaly"
    with pytest.raises(ValueError, match="init_from is a setting of classification and pretraining runs"):
        run.Experiment(finalize(anomaly), tmp_path / "c")


@pytest.mark.slow  # on a pretraining run (the fixture): in the slow run, keeping CI's run short
def test_init_from_a_model_of_other_shapes_is_named(folder_root, tmp_path, pretrained):
    other = make_tiny_config(folder_root, init_from=str(pretrained[0]))
    other = ml_collections.ConfigDict(other.to_dict())
    other.model.dims, other.model.coarse_size, other.model.fine_size = (12,), 6, 10  # every tensor of another shape
    with pytest.raises(ValueError, match="none of this model's parameters"):
        run.Experiment(finalize(other), tmp_path / "b")
