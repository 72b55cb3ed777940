"""Test-time augmentation (``config.eval.tta``): the views form the flip / dihedral group, the averaged prediction is
invariant under that group and equals the mean of plain predictions on views made on the host with NumPy, and an
evaluation with it writes beside the plain one."""

import json

import numpy as np
import pytest
from ml_collections import ConfigDict

from ssm_jax.training import classification, run, tta
from ssm_jax.training.mesh import shard_batch

IMAGES = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype(np.float32)


def _host_views(images, mode):
    """The views as NumPy makes them: the reference for the jitted path."""
    if mode == "flips":
        return [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
    return [np.rot90(x, k, axes=(1, 2)) for x in (images, images[:, :, ::-1]) for k in range(4)]


@pytest.mark.parametrize("mode, transform", [("flips", lambda x: x[:, ::-1]), ("d4", lambda x: np.rot90(x, 1, (1, 2))),
                                             ("d4", lambda x: x[:, :, ::-1])])
def test_views_are_a_group_closed_under_its_transforms(mode, transform):
    views = np.asarray(tta.views(IMAGES, mode))
    assert views.shape == (tta.TTA_MODES[mode], *IMAGES.shape)
    np.testing.assert_array_equal(views[0], IMAGES)
    flat = {v.tobytes() for v in views}
    assert len(flat) == len(views)  # all distinct on a generic image
    assert {v.tobytes() for v in np.asarray(tta.views(np.ascontiguousarray(transform(IMAGES)), mode))} == flat


def test_bad_mode_and_non_square_d4_are_named():
    with pytest.raises(ValueError, match="config.eval.tta='rot'; valid: none, flips, d4"):
        tta.views(IMAGES, "rot")
    with pytest.raises(ValueError, match="needs square images; these are 16x12. Use 'flips'"):
        tta.views(IMAGES[:, :, :12], "d4")
    assert tta.views(IMAGES[:, :, :12], "flips").shape == (4, 8, 16, 12, 3)


@pytest.fixture(scope="module")
def experiment(folder_root, tmp_path_factory):
    from tests.training.conftest import make_tiny_config
    return run.Experiment(make_tiny_config(folder_root), tmp_path_factory.mktemp("tta"))


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_averaged_prediction_is_invariant_and_matches_host_views(experiment, mode):
    mesh, state = experiment.mesh, experiment.state
    plain = classification.make_predict_step(mesh)
    step = classification.make_predict_step(mesh, tta=mode)
    probs = np.asarray(step(state, shard_batch({"x": IMAGES}, mesh)["x"])["probs"])
    reference = np.mean([np.asarray(plain(state, shard_batch({"x": np.ascontiguousarray(v)}, mesh)["x"])["probs"])
                         for v in _host_views(IMAGES, mode)], axis=0)
    np.testing.assert_allclose(probs, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    turned = np.ascontiguousarray(IMAGES[:, ::-1] if mode == "flips" else np.rot90(IMAGES, 1, (1, 2)))
    np.testing.assert_allclose(np.asarray(step(state, shard_batch({"x": turned}, mesh)["x"])["probs"]), probs,
                               rtol=1e-5, atol=1e-6)
    single = np.asarray(plain(state, shard_batch({"x": IMAGES}, mesh)["x"])["probs"])
    assert np.abs(single - probs).max() > 1e-4  # the views do change the answer of an untrained model


@pytest.mark.slow  # a training run and two evaluations; the averaged prediction itself is checked by default
def test_evaluation_with_tta_writes_beside_the_plain_one(tiny_config, tmp_path):
    config = tiny_config(max_steps=4)
    plain = run.train_and_evaluate(config, tmp_path)
    with_tta = ConfigDict(config.to_dict())
    with_tta.eval.tta = "d4"
    experiment = run.Experiment(with_tta, tmp_path)
    experiment.restore_for_eval()
    summary = experiment.evaluate()
    written = json.loads((tmp_path / "eval_tta_d4" / "metrics.json").read_text())
    assert written["tta"] == "d4" and written["num_images"] == plain["num_images"] == summary["num_images"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["tta"] == "none"
    assert (tmp_path / "eval_tta_d4" / "confusion.png").is_file()


@pytest.mark.parametrize("flips, rot90, tta, warned", [
    (("horizontal", "vertical"), False, "flips", None),
    (("horizontal", "vertical"), False, "d4", "90-degree rotations"),
    (("horizontal",), True, "d4", None), (("horizontal",), False, "flips", "mirrors"), ((), True, "d4", "mirrors"),
    ((), False, "none", None)])
def test_views_training_never_applied_are_warned(flips, rot90, tta, warned, capsys):
    config = ConfigDict({"eval": {"tta": tta}, "data": {"flips": flips, "rot90": rot90}})
    assert classification.predict_kwargs(config) == {"tta": tta}
    out = capsys.readouterr().out
    assert (warned in out and "training did not apply" in out) if warned else out == ""
