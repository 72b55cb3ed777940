"""End-to-end training behaviour: learning, outputs, exact resume, multi-device equality, and bad input."""

import dataclasses
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import unicodedata
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs.mambaad_common import all_categories, mambaad_config
from ssm_jax.data import replicas
from ssm_jax.training import classification, run
from ssm_jax.training.checkpoint import Checkpointer, CheckpointError
from ssm_jax.training.init_from import read_variables
from ssm_jax.training.log import MetricsLog
from ssm_jax.training.loop import NonFiniteLossError
from ssm_jax.training.mesh import make_mesh, shard_batch
from ssm_jax.training.preemption import Preempted
from tests.training.conftest import make_tiny_config
from tests.training.crash import crash_during_step

ROOT = Path(__file__).resolve().parents[2]


def _params(experiment):
    return jax.tree.map(np.asarray, jax.device_get(experiment.state.params))


def test_training_reduces_loss_and_writes_outputs(tiny_config, tmp_path):
    config = tiny_config(max_steps=24)
    summary = run.train_and_evaluate(config, tmp_path)
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 25))
    first, last = np.mean([r["loss"] for r in log[:3]]), np.mean([r["loss"] for r in log[-3:]])
    assert last < first * 0.8, (first, last)
    assert summary["acc"] > 1 / 3  # better than chance on brightness-coded classes
    for name in ("config.json", "training_curves.png", "eval/metrics.json", "eval/confusion.png",
                 "eval/predictions.csv"):
        assert (tmp_path / name).is_file(), name
    assert len((tmp_path / "eval/predictions.csv").read_text().splitlines()) == 1 + summary["num_images"]


def test_resume_after_crash_and_sigterm_equals_uninterrupted(tiny_config, tmp_path, monkeypatch):
    config = tiny_config(max_steps=8, checkpoint_every=3)
    straight = run.Experiment(config, tmp_path / "straight")
    straight.train()

    crash_during_step(monkeypatch, classification)  # dies during step 5, after the checkpoint at step 3
    with pytest.raises(KeyboardInterrupt):
        run.Experiment(config, tmp_path / "resumed").train()
    monkeypatch.undo()
    with (tmp_path / "resumed/metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "loss": 0.')  # a line the crash cut short: dropped on resume
    crash_during_step(monkeypatch, classification, step=2, sigterm=True)  # resumed at 3: SIGTERM during step 5
    with pytest.raises(Preempted) as stopped:
        run.Experiment(config, tmp_path / "resumed").train()
    monkeypatch.undo()
    assert stopped.value.step == 5
    assert sorted(p.name for p in (tmp_path / "resumed/checkpoints").iterdir()) == ["3", "5"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the loop's handler is gone
    resumed = run.Experiment(config, tmp_path / "resumed")
    resumed.train()

    for a, b in zip(jax.tree.leaves(_params(straight)), jax.tree.leaves(_params(resumed))):
        np.testing.assert_array_equal(a, b)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_a_run_that_died_before_its_first_checkpoint_logs_each_step_once(tiny_config, tmp_path, monkeypatch):
    """Rerun after dying before its first checkpoint, a run starts afresh, and so does its metrics.jsonl (its lines
    were appended after the dead run's, and training_curves.png drew both)."""
    config = tiny_config(max_steps=4, checkpoint_every=3)
    crash_during_step(monkeypatch, classification, step=3)  # dies during step 3: steps 1 and 2 logged, nothing saved
    with pytest.raises(KeyboardInterrupt):
        run.Experiment(config, tmp_path).train()
    monkeypatch.undo()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    run.Experiment(config, tmp_path).train()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


class _Tracked:
    """An iterator that records whether it was closed, forwarding everything else to the pipeline's iterator."""

    def __init__(self, iterator):
        self.iterator, self.closed = iterator, False

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.iterator)

    def __getattr__(self, name):
        return getattr(self.iterator, name)

    def close(self):
        self.closed = True
        self.iterator.close()


@pytest.mark.slow  # three pipelines of worker processes; the workers' own exits: tests/data/test_pipeline.py
def test_data_workers_are_stopped_however_training_ends(tiny_config, tmp_path, monkeypatch):
    """Training (finished or stopped by SIGTERM) and evaluation close their pipelines: the data worker processes
    end, rather than outliving training (and leaving shared-memory batches for Python to warn about at exit)."""
    config = tiny_config(max_steps=6, checkpoint_every=3)
    config.data.num_workers = 2
    made, real_make_pipeline = [], run.make_pipeline

    class Pipeline:
        def __init__(self, *args, **kwargs):
            self.dataset = real_make_pipeline(*args, **kwargs)

        def __iter__(self):
            made.append(_Tracked(iter(self.dataset)))
            return made[-1]

    monkeypatch.setattr(run, "make_pipeline", Pipeline)
    real_make_train_step = classification.make_train_step
    crash_during_step(monkeypatch, classification, step=2, sigterm=True)
    with pytest.raises(Preempted):
        run.Experiment(config, tmp_path).train()
    monkeypatch.setattr(classification, "make_train_step", real_make_train_step)
    experiment = run.Experiment(config, tmp_path)
    experiment.train()
    experiment.evaluate()
    assert len(made) == 3 and all(it.closed for it in made)
    assert not multiprocessing.active_children()


def test_four_device_step_equals_one_device_step(tiny_config, tmp_path):
    assert len(jax.devices()) == 4
    config = tiny_config()
    experiment = run.Experiment(config, tmp_path)
    batch = next(iter(experiment.pipeline(experiment.train_source, train=True)))
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = make_mesh(devices)
        state = classification.create_state(experiment.model, experiment.state.tx, jax.random.PRNGKey(0),
                                            config.data.image_size, mesh)
        state, metrics = classification.make_train_step(config.loss, mesh)(state, shard_batch(batch, mesh))
        results.append((jax.device_get(state.params), jax.device_get(metrics)))
    (p1, m1), (p4, m4) = results
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _steps_changed(monkeypatch, change):
    """Make classification's train steps return ``change(new_state, metrics)`` in place of their own output."""
    real_make = classification.make_train_step

    def changed_make(loss_config, mesh, *args, **kwargs):
        step_fn = real_make(loss_config, mesh, *args, **kwargs)
        return lambda state, batch: change(*step_fn(state, batch))

    monkeypatch.setattr(classification, "make_train_step", changed_make)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    config = tiny_config(max_steps=8, checkpoint_every=3)

    def nan_loss_from_five(new_state, metrics):
        if int(new_state.step) >= 5:
            metrics = {**metrics, "loss": metrics["loss"] * np.nan}
        return new_state, metrics

    _steps_changed(monkeypatch, nan_loss_from_five)
    experiment = run.Experiment(config, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 5; .*last good checkpoint is step 3"):
        experiment.train()
    assert experiment.checkpointer.all_steps() == [3]


def test_parameters_gone_nan_under_a_finite_loss_are_not_saved(tiny_config, tmp_path, monkeypatch):
    """As a NaN gradient leaves them: the loss of the step that broke them was computed before its update."""
    config = tiny_config(max_steps=8, checkpoint_every=3)

    def nan_params_at_six(new_state, metrics):
        if int(new_state.step) == 6:  # the step of a checkpoint: its loss is finite
            new_state = new_state.replace(params=jax.tree.map(lambda p: p * np.nan, new_state.params))
        return new_state, metrics

    _steps_changed(monkeypatch, nan_params_at_six)
    experiment = run.Experiment(config, tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"NaN or infinite values after step 6, .*: params/\S+ and [0-9]+ more "
                                                 r"arrays; .*last good checkpoint is step 3"):
        experiment.train()
    assert experiment.checkpointer.all_steps() == [3]


@pytest.mark.slow  # trains one model, then builds a second
def test_workdir_of_another_model_is_refused(tiny_config, tmp_path):
    run.Experiment(tiny_config(max_steps=3), tmp_path).train()
    other = tiny_config(max_steps=3)
    with other.unlocked():
        other.model.dims = (16,)
    with pytest.raises(CheckpointError, match="holds a checkpoint of model 'memorymamba'.*different parameter tree.*"
                                              f"--config=configs/from_run.py:{tmp_path} reads its config.json"):
        run.Experiment(other, tmp_path).train()
    assert json.loads((tmp_path / "config.json").read_text())["model"]["dims"] != [16]  # the config that wrote it


def test_damaged_metrics_log_line_is_named(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.write(step, {"loss": 1.0 / step})
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join([lines[0], lines[1][:9], lines[2]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not a JSON record"):
        log.trim_after(3)


def test_a_runs_own_config_takes_overrides_of_fields_that_were_none(tmp_path):
    """``configs/from_run.py`` through eval.py's flag parser: a field that was None in the run (every category, the
    loader's default root) can still be set, as in the config file it was trained from."""
    from configs import from_run
    from ssm_jax.training.log import write_config
    config = mambaad_config("mvtec", None, epochs=1, categories=all_categories())
    write_config(tmp_path, config)
    assert from_run.get_config(str(tmp_path)).to_dict() == config.to_dict()
    script = ("import sys\nfrom ssm_jax.training import cli\nconfig, _ = cli.define_run_flags('')\n"
              f"cli.parse_flags(['eval.py', '--config=configs/from_run.py:{tmp_path}', '--workdir=unused']"
              " + sys.argv[1:])\n"
              "c = config.value\nprint(repr(c.data.source.categories), repr(c.data.root), c.eval.flag_threshold)\n")

    def parsed(*overrides):
        done = subprocess.run([sys.executable, "-c", script, *overrides], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert parsed("--config.data.source.categories=bottle", f"--config.data.root={tmp_path}/mvtec",
                  "--config.eval.flag_threshold=0.31") == f"'bottle' '{tmp_path}/mvtec' 0.31"
    assert parsed("--config.data.source.categories=('bottle', 'cable')") == "('bottle', 'cable') None 0.0"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # see drop_closed_loop_callbacks
def test_truncated_checkpoint_gives_clear_error(tiny_config, tmp_path, monkeypatch):
    config = tiny_config(max_steps=3)
    run.Experiment(config, tmp_path).train()
    # orbax's data files cut short, its metadata intact: the failure comes from inside tensorstore's reads
    for f in (tmp_path / "checkpoints" / "3" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 4])
    with pytest.raises(CheckpointError, match=r"checkpoints/3 is unreadable .*no earlier checkpoint") as err:
        run.Experiment(config, tmp_path).train()
    assert "\n" not in str(err.value) and len(str(err.value)) < 800  # one line, not tensorstore's spec of the array
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # as a script starts, before any failed read
    with pytest.raises(ValueError, match=r"init_from=.*checkpoints/3 is unreadable \(truncated") as err:
        read_variables(tmp_path)  # another run starting from this one: the same one line
    assert "\n" not in str(err.value) and len(str(err.value)) < 800
    assert getattr(sys.unraisablehook, "drops_closed_loop_callbacks", False)  # and without the failed read's noise
    closed = []
    close = Checkpointer.close
    monkeypatch.setattr(Checkpointer, "close", lambda self: closed.append(self.directory) or close(self))
    with pytest.raises(CheckpointError, match=r"no earlier checkpoint exists; train again in a new --workdir"):
        run.Experiment.for_eval(config, tmp_path)  # evaluating or predicting: its manager is closed, not left
    assert closed == [tmp_path / "checkpoints"]


def test_missing_dataset_names_the_path(tiny_config, tmp_path):
    config = tiny_config()
    with config.unlocked():
        config.data.root = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*pass --config.data.root=DIR, or set \$SSM_JAX_DATA"):
        run.Experiment(config, tmp_path / "run")
    mvtec = replicas.write_replica("mvtec", str(tmp_path), per_class=1)
    parts = mambaad_config("mvtec", mvtec, epochs=1, categories="cable")
    with pytest.raises(FileNotFoundError, match=r"categories \['cable'\] not found") as err:
        run.load_source(parts, "train")  # the root is there: the message names what it lacks, without the hint
    assert "SSM_JAX_DATA" not in str(err.value)


def test_the_data_sections_bit_depth_and_centre_crop_reach_the_source(tiny_config):
    config = tiny_config()
    plain = run.load_source(config, "train")
    assert (plain.bit_depth, plain.center_crop) == (0, 1.0)
    with config.unlocked():
        config.data.bit_depth, config.data.center_crop = 12, 0.875
    source = run.load_source(config, "train")
    assert (source.bit_depth, source.center_crop) == (12, 0.875) and source.records == plain.records
    config.data.bit_depth = 6
    with pytest.raises(ValueError, match=r"config.data.bit_depth=6: expected 0 \(the file type's range\) or 8..32"):
        run.Experiment(config, "/nowhere")


def test_a_run_resumes_only_at_the_bit_depth_it_trained_with(tiny_config, tmp_path):
    run.Experiment(tiny_config(max_steps=3), tmp_path).train()  # bit_depth 0, a checkpoint at step 3
    config = tiny_config(max_steps=6)
    with config.unlocked():
        config.data.bit_depth = 12
    with pytest.raises(ValueError, match=r"config.data.bit_depth=12 but the run .* read with bit_depth 0"):
        run.Experiment(config, tmp_path)


def test_unknown_source_option_lists_valid_ones(tiny_config, tmp_path):
    config = tiny_config()
    with config.unlocked():
        config.data.source.test_frac = 0.5
    with pytest.raises(ValueError, match=r"unknown keys \['test_frac'\].*test_fraction"):
        run.Experiment(config, tmp_path)


def test_cli_rejects_unknown_config_key(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--config=configs/memorymamba_elpv.py:cpu",
                             f"--workdir={tmp_path}", "--config.optim.learning_rate=1e-3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "learning_rate" in result.stderr and not (tmp_path / "checkpoints").exists()


def test_eval_restores_with_the_optimizer_the_run_trained_with(tiny_config, tmp_path, capsys):
    """A setting that changes the optimizer state's structure (gradient clipping, e.g. a config default added after
    the run) does not stop eval.py: the run's config.json says how it trained, and the metrics are the run's."""
    trained = run.Experiment(tiny_config(), tmp_path)
    trained.train()
    expected = trained.evaluate()
    config = tiny_config()
    config.optim.grad_clip = 5.0
    with pytest.raises(CheckpointError, match="another structure"):
        run.Experiment(config, tmp_path).restore_for_eval()
    experiment = run.Experiment.for_eval(config, tmp_path)
    assert "from " + str(tmp_path / "config.json") + ": grad_clip=0.0 (the config says 5.0)" in capsys.readouterr().out
    assert experiment.config.optim.grad_clip == 0.0 and config.optim.grad_clip == 5.0
    assert experiment.evaluate()["acc"] == expected["acc"]


def test_predicting_oblong_images_says_they_are_squashed_and_how_the_picture_shows_them(tmp_path, capsys):
    """Squashed, as an anomaly detector's overlays show them; a classifier's picture draws the files as stored."""
    from PIL import Image
    for name, size in (("a.png", (40, 20)), ("b.png", (30, 30)), ("c.png", (10, 50))):
        Image.new("RGB", size).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not a png")  # left to the prediction, which names it
    paths = sorted(str(p) for p in tmp_path.iterdir())
    said = f"2 of 4 images are not square (e.g. {tmp_path / 'a.png'}, 40x20); each is resized to 64x64 as the " \
           f"training images were, changing its proportions"
    run._warn_if_not_square(paths, 64, run.TASKS["anomaly"].folder_picture_as_stored)
    assert said + ", and so shown\n" in capsys.readouterr().out
    run._warn_if_not_square(paths, 64, run.TASKS["classification"].folder_picture_as_stored)
    assert said + "; predict_<folder>.png shows the files as stored\n" in capsys.readouterr().out
    run._warn_if_not_square([str(tmp_path / "b.png")], 64, False)
    assert capsys.readouterr().out == ""


def test_eval_takes_any_training_batch_size_only_its_own_must_split_over_the_devices(tiny_config, tmp_path):
    run.Experiment(tiny_config(max_steps=2), tmp_path).train()
    config = tiny_config(max_steps=2, batch_size=6)  # 6 rows do not split over the 4 test devices
    with pytest.raises(ValueError, match=r"train.batch_size=6 must be a multiple of the number of devices \(4\)"):
        run.Experiment(config, tmp_path)
    assert run.Experiment.for_eval(config, tmp_path).evaluate()["num_images"] > 0
    with pytest.raises(ValueError, match=r"train.eval_batch_size=6 must be a multiple"):
        run.Experiment.for_eval(tiny_config(max_steps=2, eval_batch_size=6), tmp_path)


def _class_folders(root, names, per_class=12, seed=0):
    """root/<name>/i.png for each class name: 16 px images whose brightness follows the class."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 + 70 * k, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_evaluating_on_other_class_folders_is_refused(tmp_path):
    """A run evaluated on a dataset whose class folders differ from those it trained with (one renamed), or come in
    another order (the same names stored decomposed, as a copy made on macOS stores them, sort otherwise), is
    refused: its outputs would be scored against the wrong classes."""
    names = ["\u00d6l", "rost", "zink"]  # NFC "Öl" sorts last, its decomposed form "O\u0308l" first
    trained = _class_folders(tmp_path / "nfc", names)
    config = make_tiny_config(str(trained), max_steps=2)
    run.Experiment(config, tmp_path / "run").train()
    run.Experiment.for_eval(config, tmp_path / "run")  # the same folders: evaluates
    renamed = _class_folders(tmp_path / "renamed", ["\u00d6l", "rost", "zinc"])
    decomposed = _class_folders(tmp_path / "nfd", [unicodedata.normalize("NFD", n) for n in names])
    for root, hint in ((renamed, ""), (decomposed, r".*the same names in another order")):
        with config.unlocked():
            config.data.root = str(root)
        with pytest.raises(ValueError, match=r"the dataset's classes .* are not the classes the run in .* trained "
                                             r"with, in their order: \['rost', 'zink', 'Öl'\]" + hint):
            run.Experiment.for_eval(config, tmp_path / "run")


def test_evaluating_where_the_data_is_not_names_the_root_the_run_trained_with(tmp_path):
    """eval.py with the config file alone, for a run given --config.data.root: the file's root does not exist, and
    the error says where the run read its data and how to evaluate there."""
    trained = _class_folders(tmp_path / "parts", ["a", "b", "c"])
    config = make_tiny_config(str(trained), max_steps=2)
    run.Experiment(config, tmp_path / "run").train()
    with config.unlocked():
        config.data.root = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=rf"nowhere.*; the run in .*run trained with --config.data.root="
                                                rf"{re.escape(str(trained))}: pass it, or --config=configs/from_run"):
        run.Experiment.for_eval(config, tmp_path / "run")


def test_evaluating_with_a_train_batch_larger_than_the_training_set(tmp_path, tiny_config, capsys):
    """The train batch does not enter an evaluation: a config file's default batch, larger than the run's training
    set (which trained at a smaller one), evaluates the run. Its last line names the files it wrote: without
    eval.binary_from, no binary ROC."""
    config = tiny_config(max_steps=2)
    run.Experiment(config, tmp_path).train()
    with config.unlocked():
        config.train.batch_size = 64  # 27 training images
    with pytest.raises(ValueError, match="fewer than one batch of train.batch_size=64"):
        run.Experiment(config, tmp_path / "new")
    capsys.readouterr()
    assert run.Experiment.for_eval(config, tmp_path).evaluate()["num_images"] == 9
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"wrote {tmp_path / 'eval'} (metrics.json, confusion.png, mistakes.png, predictions.csv)")


def test_file_names_the_locale_cannot_decode_are_refused_before_anything_is_written(tmp_path):
    """Under an ASCII file-system encoding (LC_ALL=C with PYTHONUTF8=0) a class folder named in Chinese is refused
    when the dataset is read, saying how to run with a UTF-8 locale."""
    _class_folders(tmp_path / "data", ["\u5212\u75d5", "ok", "stain"], per_class=4)
    script = tmp_path / "load.py"
    script.write_text("import sys\nfrom ssm_jax.training import run\nfrom tests.training.conftest import "
                      "make_tiny_config\ntry:\n    run.load_source(make_tiny_config(sys.argv[1]), 'train')\n"
                      "except ValueError as err:\n    print(err)\n", encoding="utf-8")
    env = {**os.environ, "PYTHONUTF8": "0", "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0",
           "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "data")], env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "holds bytes this locale cannot decode (Python's file-system encoding is ascii); run with a UTF-8 " \
           "locale: export LANG=C.UTF-8, or PYTHONUTF8=1" in done.stdout


def test_an_empty_test_split_trains_without_evaluation_and_eval_names_it(tiny_config, tmp_path, capsys):
    """test_fraction 0 (train on every image) or a dataset too small to split: the run says so before its first step,
    trains and checkpoints, and skips the evaluation instead of failing after the last step; evaluating it names the
    empty split."""
    config = tiny_config(max_steps=2)
    with config.unlocked():
        config.data.source.test_fraction = 0.0
    assert run.train_and_evaluate(config, tmp_path) == {}
    out = capsys.readouterr().out
    assert "the test split of 'folder'" in out and "holds no images" in out and "skips the evaluation" in out
    assert "2" in [p.name for p in (tmp_path / "checkpoints").iterdir()] and not (tmp_path / "eval").exists()
    with pytest.raises(ValueError, match=r"holds no images .*test_fraction.*: nothing to evaluate"):
        run.Experiment.for_eval(config, tmp_path).evaluate()


def test_a_class_without_training_images_is_warned_of(tiny_config):
    """A class whose few images the split put in the test set cannot be learned: said before training."""
    config = tiny_config()
    train = run.load_source(config, "train")
    without_c = dataclasses.replace(train, records=[r for r in train.records if r.label != 2])
    with pytest.warns(UserWarning, match=r"classes \['c'\] have no training image"):
        run._check_classes(config, without_c)


def test_folders_of_one_name_are_predicted_into_files_of_their_own(tmp_path, capsys):
    """line_1/2026-12-07 and line_2/2026-12-07 both end in 2026-12-07: the second is predict_2026-12-07-2.csv, so
    the first's results stay; each folder keeps its name when predicted again, and a CSV written before the index
    existed is not overwritten either."""
    eval_dir = tmp_path / "run" / "eval"
    first, second, third = (tmp_path / line / "2026-12-07" for line in ("line_1", "line_2", "line_3"))
    assert run._prediction_name(eval_dir, first) == "2026-12-07"
    assert run._prediction_name(eval_dir, second) == "2026-12-07-2"
    assert f"predict_2026-12-07.csv holds {first}" in capsys.readouterr().out
    assert run._prediction_name(eval_dir, first) == "2026-12-07"
    assert run._prediction_name(eval_dir, tmp_path / "line_2" / "." / "2026-12-07") == "2026-12-07-2"
    (eval_dir / "predict_cells.csv").write_text("path,score\n")  # from a version without the index
    assert run._prediction_name(eval_dir, tmp_path / "cells") == "cells-2"
    assert "holds a folder predicted before predict_folders.json" in capsys.readouterr().out
    assert run._prediction_name(eval_dir, third) == "2026-12-07-3"
    (eval_dir / "predict_folders.json").write_text("[")
    with pytest.raises(ValueError, match=r"predict_folders.json is unreadable; expected the JSON object"):
        run._prediction_name(eval_dir, first)


def test_the_run_summary_counts_in_the_singular_and_the_plural(tiny_config, tmp_path, capsys):
    """"1 step of batch 8 on 1 cpu device": no "1 steps" or "device(s)"."""
    run.Experiment(tiny_config(max_steps=1, checkpoint_every=1), tmp_path).train()
    out = capsys.readouterr().out
    assert f"; 1 step of batch 8 on {jax.device_count()} cpu device{'' if jax.device_count() == 1 else 's'}, " \
           f"1 micro-batch per step" in out
