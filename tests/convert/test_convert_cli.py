"""``python -m ssm_jax.convert``: an official-layout MambaAD checkpoint (small, random weights) becomes a workdir that
eval.py's path (``Experiment`` + ``restore_for_eval`` + ``evaluate``) restores bit for bit with the printed command,
that train.py treats as finished, and bad input fails with one clear error."""

import contextlib
import os
import io
import shlex
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from ssm_jax.convert import from_torch
from ssm_jax.convert.__main__ import main, parse
from ssm_jax.data.pipeline import normalize
from ssm_jax.inference import Predictor
from ssm_jax.models.mambaad import anomaly_maps
from ssm_jax.training import run
from tests.convert.torch_mambaad import TorchMambaAD, randomize

pytestmark = pytest.mark.torch
ROOT = Path(__file__).resolve().parents[2]
CONFIG = f"{ROOT / 'configs/mambaad_elpv.py'}:synthetic_cpu"  # 64 px, decoder depths 2-2-2-2, batch 8, 2 epochs
SMALL = ["--config.data.source.num_train=16", "--config.data.source.num_test=8", "--config.eval.num_overlays=2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An official-layout MambaAD (ResNet18 encoder, depths 2-2-2-2, 8 Hilbert directions) saved as ADer does."""
    torch.manual_seed(0)
    model = randomize(TorchMambaAD(encoder=("basic", (2, 2, 2, 2)), depths=(2, 2, 2, 2), base_size=2), seed=0)
    path = tmp_path_factory.mktemp("official") / "mambaad.pth"
    torch.save({"net": model.state_dict(), "epoch": 3}, path)
    return path


def _main(*argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["convert", *map(str, argv)])
    return out.getvalue()


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory):
    """(workdir, the eval.py command the CLI printed)."""
    workdir = tmp_path_factory.mktemp("run") / "official"
    printed = _main("mambaad", checkpoint, workdir, f"--config={CONFIG}", *SMALL)
    return workdir, printed.strip().splitlines()[-1].strip()


def _eval_config(command: str, workdir):
    """The config eval.py builds from ``command`` (its flags parsed the way eval.py parses them)."""
    args = shlex.split(command)
    assert args[:2] == ["python", "eval.py"] and f"--workdir={workdir}" in args
    return parse(["eval.py", *(a for a in args[2:] if not a.startswith("--workdir="))])[2]


def _params(state):
    return jax.device_get(state.params), jax.device_get(state.model_state["batch_stats"])


@pytest.fixture(scope="module")
def expected(checkpoint):
    return from_torch("mambaad", str(checkpoint))[1]


@pytest.mark.slow  # trains nothing but compiles and evaluates MambaAD end to end in a subprocess
def test_eval_restores_the_converted_weights(converted, expected):
    workdir, command = converted
    assert "--config.model.encoder=resnet18" in command and "--config.model.decoder_dims='(512, 256, 128, 64)'" in \
        command and "--config.model.decoder_depths" not in command  # 2-2-2-2 is the variant's own
    assert all(flag in command for flag in SMALL)
    assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl",
                                                         "train_set.json"]
    experiment = run.Experiment(_eval_config(command, workdir), workdir)
    experiment.restore_for_eval()
    params, stats = _params(experiment.state)
    jax.tree.map(np.testing.assert_array_equal, params, expected["params"])
    jax.tree.map(np.testing.assert_array_equal, stats, expected["batch_stats"])
    assert int(experiment.state.step) == experiment.total_steps == 4  # 2 epochs x 16 images / batch 8
    summary = experiment.evaluate()
    assert (workdir / "eval/metrics.json").is_file() and summary["num_images"] == 8


@pytest.mark.slow  # compiles MambaAD end to end in a subprocess
def test_train_on_the_converted_workdir_trains_no_step(converted, expected):
    workdir, command = converted
    experiment = run.Experiment(_eval_config(command, workdir), workdir)
    experiment.train()
    assert int(experiment.state.step) == 4 and experiment.checkpointer.all_steps() == [4]
    jax.tree.map(np.testing.assert_array_equal, _params(experiment.state)[0], expected["params"])
    assert (workdir / "metrics.jsonl").read_text() == "" and (workdir / "training_curves.png").is_file()


@pytest.mark.slow  # compiles MambaAD's predict step
def test_the_converted_run_predicts_the_official_models_maps_without_the_data(converted, checkpoint, tmp_path,
                                                                            monkeypatch):
    """A station copy of the converted directory: Predictor (config.json, train_set.json, no dataset) against
    anomaly_maps of the converted variables (maps are kept in float16, as eval keeps them)."""
    workdir, _ = converted
    station = tmp_path / "station"
    shutil.copytree(workdir, station)

    def no_data(config, split):
        raise FileNotFoundError("the dataset is not on this machine")

    monkeypatch.setattr(run, "load_source", no_data)
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    out = Predictor.from_run(station)(images)
    model_config, variables = from_torch("mambaad", str(checkpoint))
    maps, scores = anomaly_maps(model_config, variables, normalize(images))
    np.testing.assert_allclose(out["scores"], scores, rtol=1e-5)
    np.testing.assert_allclose(out["maps"], maps, rtol=1e-3, atol=1e-4)


def _error(*argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _main(*argv)
    message = str(exit_info.value.code)
    assert message.startswith("error: ")
    return message


def test_bad_input_is_one_clear_error(checkpoint, converted, tmp_path):
    workdir, _ = converted
    assert "no checkpoint file at" in _error("mambaad", tmp_path / "missing.pth", tmp_path / "a", f"--config={CONFIG}")
    message = _error("resnet34", checkpoint, tmp_path / "a", f"--config={CONFIG}")
    assert "encoder" in message and "--config.model.encoder_weights" in message and "\n" not in message
    assert "unknown kind 'vmamba'; valid: mambaad" in _error("vmamba", checkpoint, tmp_path / "a", f"--config={CONFIG}")
    assert "refusing to overwrite" in _error("mambaad", checkpoint, workdir, f"--config={CONFIG}")
    assert "unknown config key" in _error("mambaad", checkpoint, tmp_path / "a", f"--config={CONFIG}",
                                          "--config.model.depth=3")
    assert "expected KIND CHECKPOINT WORKDIR" in _error("mambaad", checkpoint, f"--config={CONFIG}")
    small = _error("mambaad", checkpoint, tmp_path / "a", f"--config={CONFIG}", "--config.data.source.num_train=4")
    assert "pass --config.train.batch_size=4 or less" in small


def test_a_dataset_that_is_not_there_is_named_with_why_and_what_works_without_it(checkpoint, tmp_path):
    """The run directory is made of the training split (its last step, train_set.json): the missing folder, the flag,
    the reason and the data-free way to score images are one message, and nothing is written."""
    root = tmp_path / "not_here" / "mvtec"
    message = _error("mambaad", checkpoint, tmp_path / "run", f"--config={ROOT / 'configs/mambaad_mvtec.py'}",
                     f"--config.data.root={root}")
    assert f"directory '{root}' not found" in message and "pass --config.data.root=DIR" in message
    assert ("the run's checkpoint is saved at the step its training ends (train.epochs x training images / "
            "train.batch_size) and its train_set.json records the split" in message)
    assert "ssm_jax.convert.from_torch and ssm_jax.models.mambaad.anomaly_maps score images" in message
    assert "\n" not in message and not (tmp_path / "run").exists()


def test_overrides_may_come_before_the_config_flag(tmp_path):
    """As the usage line reads, flags come in any order: an override before --config (either form) applies."""
    for config_flag in ([f"--config={CONFIG}"], ["--config", CONFIG]):
        argv = ["convert", "mambaad", "a.pth", str(tmp_path / "run"), "--config.train.epochs=3", *config_flag]
        positional, _, config = parse(argv)
        assert positional == ["mambaad", "a.pth", str(tmp_path / "run")] and config.train.epochs == 3


def test_a_checkpoint_that_does_not_match_names_its_keys(checkpoint, tmp_path):
    state = torch.load(checkpoint)["net"]
    del state["net_s.layers_up.1.blocks.0.finalconv11.bias"]
    state["net_s.layers_up.0.blocks.0.extra_gate.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save({"net": state}, path)
    message = _error("mambaad", path, tmp_path / "run", f"--config={CONFIG}")
    assert "layers_up_1_blocks_0/finalconv11/bias" in message and "extra_gate" in message
    assert not (tmp_path / "run").exists()


def test_runs_from_any_folder_with_the_repositorys_default_config(tmp_path):
    """Outside the repository, the default config is the checkout's, and the config files' ``from configs import``
    resolves: the run gets as far as reading the checkpoint."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "ssm_jax.convert", "mambaad", "none.pth", "run"], cwd=tmp_path,
                         capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert run.returncode != 0 and "error: no checkpoint file at" in run.stderr, run.stderr[-2000:]
