"""A config of another task or model than the run in its workdir (its config.json, else its train_set.json) is
refused by name, before any check that reads the run's records: a SNARM config on a MemoryMamba classifier's
workdir used to print the classifier's optimizer settings as its own, then blame the dataset's class folders."""

import json
import re
import shutil

import pytest

from ssm_jax.models.resnet_classifier import resnet_model_config
from ssm_jax.training import run
from tests.training.conftest import make_tiny_config
from tests.training.test_pretraining import pretraining_config
from tests.training.test_residual import make_tiny_config as snarm_config


@pytest.fixture(scope="module")
def workdir(folder_root, tmp_path_factory):
    """A tiny MemoryMamba classifier's workdir after 2 steps: a checkpoint, config.json and train_set.json."""
    workdir = tmp_path_factory.mktemp("memorymamba")
    run.Experiment(make_tiny_config(folder_root, max_steps=2, checkpoint_every=2), workdir).train()
    return workdir


def _resnet_config(data_root):
    """The same task (classification) with another model: the ResNet baseline."""
    config = make_tiny_config(data_root, max_steps=2, checkpoint_every=2)
    with config.unlocked():
        config.model = resnet_model_config(3, arch="resnet18")
        config.model.name = "resnet"
    return config


OTHERS = {  # another config: (its task and model as the message names them, a factory of it from the data root)
    "another task and model": ("'snarm' for residual", lambda root: snarm_config()),
    "another task": ("'memorymamba' for pretraining", pretraining_config),
    "another model": ("'resnet' for classification", _resnet_config),
}


def _refusal(workdir, ours: str) -> str:
    return re.escape(f"{workdir} holds a classification run of model 'memorymamba' (its config.json); this config "
                     f"trains {ours}: pass the config that run was trained with (--config=configs/from_run.py:"
                     f"{workdir} reads its config.json), or another --workdir")


def _records(workdir) -> dict:
    return {name: (workdir / name).read_text() for name in ("config.json", "train_set.json")}


@pytest.mark.parametrize("other", OTHERS)
def test_evaluating_with_another_runs_config_names_the_run(workdir, folder_root, capsys, other):
    ours, make = OTHERS[other]
    before = _records(workdir)
    with pytest.raises(ValueError, match=_refusal(workdir, ours)):
        run.Experiment.for_eval(make(folder_root), workdir)
    with pytest.raises(ValueError, match=_refusal(workdir, ours)):
        run.Experiment.for_eval(make(folder_root), workdir, predict_only=True)
    assert "optimizer settings" not in capsys.readouterr().out  # no note of the run's settings as this config's
    assert _records(workdir) == before and not (workdir / "eval").exists()


@pytest.mark.parametrize("other", OTHERS)
def test_resuming_with_another_runs_config_names_the_run(workdir, folder_root, tmp_path, capsys, other):
    ours, make = OTHERS[other]
    copy = shutil.copytree(workdir, tmp_path / "copy")
    with pytest.raises(ValueError, match=_refusal(copy, ours)):
        run.Experiment(make(folder_root), copy)
    assert capsys.readouterr().out == "" and _records(copy) == _records(workdir)


def test_a_run_without_config_json_is_named_by_its_train_set(workdir, tmp_path, capsys):
    """A run from before config.json was written, or another tool's checkpoint: its train_set.json's dataset task."""
    copy = shutil.copytree(workdir, tmp_path / "copy")
    (copy / "config.json").unlink()
    refusal = re.escape(f"{copy} holds a run on a classification dataset (its train_set.json); this config trains "
                        f"'snarm' for residual, on anomaly datasets: pass the config that run was trained with, or "
                        f"another --workdir")
    with pytest.raises(ValueError, match=refusal):
        run.Experiment.for_eval(snarm_config(), copy)
    with pytest.raises(ValueError, match=refusal):
        run.Experiment(snarm_config(), copy)
    assert "optimizer settings" not in capsys.readouterr().out


def test_the_runs_own_config_still_evaluates_and_resumes(workdir, folder_root, tmp_path):
    """With its records, and without them (a run from before they were written)."""
    config = make_tiny_config(folder_root, max_steps=2, checkpoint_every=2)
    assert int(run.Experiment.for_eval(config, workdir).state.step) == 2
    assert run.Experiment(config, workdir).family is run.TASKS["classification"]
    bare = shutil.copytree(workdir, tmp_path / "bare")
    for name in ("config.json", "train_set.json"):
        (bare / name).unlink()
    assert int(run.Experiment.for_eval(config, bare).state.step) == 2


def test_a_fresh_start_where_a_run_died_before_its_first_checkpoint_takes_another_config(workdir, folder_root,
                                                                                          tmp_path):
    """Records without a checkpoint: nothing to resume, so another config starts afresh and writes its own."""
    died = shutil.copytree(workdir, tmp_path / "died")
    shutil.rmtree(died / "checkpoints")
    experiment = run.Experiment(pretraining_config(folder_root, max_steps=1, checkpoint_every=1), died)
    experiment.train()
    assert json.loads((died / "config.json").read_text())["task"] == "pretraining"
