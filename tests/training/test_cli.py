"""The CLI wrapper's exits: bad input is one message with code 1, a run stopped by SIGTERM exits with code 143
(130 for Ctrl-C)."""

import ast
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from ssm_jax.data.split import stratified_split
from ssm_jax.training import cli
from ssm_jax.training.preemption import Preempted, StopSignal, raise_on_sigterm


def _raise(err):
    raise err


def test_bad_input_exits_with_its_message():
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["train.py"], stratified_split, [0, 1], 2.0)  # the project's own check of its input
    assert exit_info.value.code == "error: test_fraction 2.0 not in [0, 1]"


def test_an_error_of_the_same_type_from_inside_a_library_keeps_its_traceback():
    """A ValueError that NumPy raises (a fault in the code, not an input to fix) is not cut to its message."""
    with pytest.raises(ValueError, match="need at least one array to concatenate"):
        cli.run(["train.py"], np.concatenate, [])


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_run_exits_with_the_signals_code_and_says_how_to_resume(capsys, signum, code):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["train.py"], _raise, Preempted(40, "runs/x/checkpoints", signum))
    assert exit_info.value.code == code
    assert f"({signum.name}) after step 40; its checkpoint is in runs/x/checkpoints: run the same command again" in \
        capsys.readouterr().err


@pytest.mark.parametrize("stop, code, name", [(StopSignal(signal.SIGTERM), 143, "SIGTERM"),
                                              (KeyboardInterrupt(), 130, "Ctrl-C")])
def test_a_run_stopped_outside_the_training_loop_exits_with_the_signals_code(capsys, stop, code, name):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["eval.py"], _raise, stop)
    assert exit_info.value.code == code
    assert f"stopped on request ({name}); any checkpoint already written is kept" in capsys.readouterr().err


def _terminated():
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # the handler runs between bytecodes
        pass


def test_sigterm_outside_the_training_loop_raises_where_the_program_is(capsys):
    """So that the program unwinds (its data workers stopped) instead of dying at once; only where SIGTERM had its
    default action."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.run(["eval.py"], _terminated)
        assert exit_info.value.code == 143 and "stopped on request (SIGTERM)" in capsys.readouterr().err
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise_on_sigterm()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # a handler someone set is kept
    finally:
        signal.signal(signal.SIGTERM, previous)


def _allocate_a_terabyte():
    jax.numpy.zeros((1 << 40,), jax.numpy.uint8).block_until_ready()


def test_running_out_of_device_memory_is_one_message_saying_what_to_change():
    """A real allocation XLA refuses (on the CPU backend as on a GPU: RESOURCE_EXHAUSTED), not a made-up error."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["train.py"], _allocate_a_terabyte)
    message = exit_info.value.code
    assert message.startswith("error: the accelerator ran out of memory (RESOURCE_EXHAUSTED: ")
    assert "1099511627776 bytes" in message  # XLA's own words, kept
    for setting in ("--config.train.batch_size", "--config.train.grad_accum_steps", "XLA_PYTHON_CLIENT_MEM_FRACTION"):
        assert setting in message


def test_out_of_memory_with_a_share_of_the_gpu_names_that_share(monkeypatch):
    """Three runs at 0.3 of an 80 GB card each had 24 GB for the step's 26 GB: the message says which share ran out."""
    err = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 26.29GiB")
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    alone = cli.out_of_memory_message(err)
    assert "give each a share with XLA_PYTHON_CLIENT_MEM_FRACTION" in alone and "had" not in alone
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.3")
    shared = cli.out_of_memory_message(err)
    assert "26.29GiB" in shared
    assert "This process had XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 of the GPU's memory" in shared
    assert "run fewer at once, each with a larger share" in shared


def test_other_errors_keep_their_traceback():
    with pytest.raises(RuntimeError, match="bug"):
        cli.run(["train.py"], _raise, RuntimeError("bug"))
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        cli.run(["train.py"], _raise, jax.errors.JaxRuntimeError("INTERNAL: a compiler bug"))


@pytest.mark.parametrize("override, expected", [
    ("--config.optim.lrr=1e-4", "there is no field 'lrr' at that level (did you mean 'lr'?)"),
    ("--config.optimm.lr=1e-4", "there is no field 'optimm' at that level (did you mean 'optim'?)"),
    ("--config.nothing_like_it=1", "there is no field 'nothing_like_it' at that level; the fields there: data, "
                                   "eval, loss, model, optim, seed, task, train"),
    ("--config.optim.lrr=1e-4", "; the fields there: b1, b2, decay, ema_decay, end_lr, eps,"),
])
def test_a_mistyped_config_key_is_one_line_naming_it(override, expected, tmp_path):
    """Through train.py itself, so the error is the one ml_collections raises while absl parses the flags."""
    root = pathlib.Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "train.py", "--config=configs/memorymamba_elpv.py:cpu",
                           f"--workdir={tmp_path}", override], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: unknown config key in {override.split('=')[0]!r}: "), lines
    assert expected in lines[0]
    assert not any(tmp_path.iterdir())  # nothing written for a run that never started


def test_a_field_of_another_task_names_the_configs_that_have_it(tmp_path):
    """Test-time augmentation is a classifier's: given to an anomaly detector's eval.py, the message names the
    classification configs beside it; a key no config has names none."""
    root = pathlib.Path(__file__).resolve().parents[2]
    lines = {}
    for override in ("--config.eval.tta=d4", "--config.eval.nothing_like_it=1"):
        done = subprocess.run([sys.executable, "eval.py", "--config=configs/mambaad_elpv.py:defects_cpu",
                               f"--workdir={tmp_path}", override], cwd=root, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 1
        lines[override] = done.stderr.strip().splitlines()
    assert len(lines["--config.eval.tta=d4"]) == 1
    assert ("; eval.tta is a field of memorymamba_aluminum.py (classification), memorymamba_elpv.py (classification)"
            in lines["--config.eval.tta=d4"][0])
    assert "memorymamba_common.py" not in lines["--config.eval.tta=d4"][0]  # a helper module, not a config
    assert len(lines["--config.eval.nothing_like_it=1"]) == 1 and "is a field of" not in lines[
        "--config.eval.nothing_like_it=1"][0]


@pytest.mark.parametrize("config, expected", [
    ("configs/no_such_config.py", "error: cannot load the --config file: configs/no_such_config.py; [Errno 2] No "
                                  "such file or directory"),
    ("configs/memorymamba_elpv.py:bogus", "Error whilst parsing config file: ValueError: unknown variant 'bogus' of "
                                          "memorymamba_elpv; valid: gpu, cpu, mim, mim_cpu"),
    ("configs/mambaad_mvtec.py:cpu", "error: configs/mambaad_mvtec.py has no variants, so not 'cpu': use "
                                     "--config=configs/mambaad_mvtec.py and change what differs with --config.*"),
])
def test_a_config_file_that_does_not_load_is_one_message(config, expected, tmp_path):
    root = pathlib.Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "train.py", f"--config={config}", f"--workdir={tmp_path}"], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert expected in done.stderr.strip().splitlines()[0]


_SOURCE_OPTIONS = """
import sys
from ssm_jax.training import cli
config, _ = cli.define_run_flags("")
cli.parse_flags(["train.py", "--config=configs/memorymamba_folder.py", "--workdir=unused"] + sys.argv[1:])
print(repr(config.value.data.source.sizes), repr(config.value.data.source.class_names))
"""


def test_any_option_of_the_datasets_loader_is_a_config_key():
    """``folder_source``'s ``sizes`` and ``class_names``, which the folder config file does not set, are still
    ``--config.data.source`` keys (empty ones leave the loader's defaults)."""
    root = pathlib.Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", _SOURCE_OPTIONS, "--config.data.source.sizes=(20, 10)",
                           "--config.data.source.class_names=('a', 'b')"], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(20, 10) ('a', 'b')"


_DETERMINISTIC = """
import os, sys
import jax
from ssm_jax.training import cli
config, _ = cli.define_run_flags("")
cli.parse_flags(["train.py", "--config=configs/resnet_elpv.py:cpu", "--workdir=unused"] + sys.argv[1:])
cli.use_deterministic_ops(config.value)
print(os.environ.get("XLA_FLAGS"), "|", float(jax.numpy.ones(3).sum()))
"""


@pytest.mark.parametrize("override, flags", [
    ("--config.train.deterministic=True", "--xla_cpu_enable_fast_math=false --xla_gpu_deterministic_ops=true"),
    ("--config.train.deterministic=False", "--xla_cpu_enable_fast_math=false"),
])
def test_deterministic_adds_xla_flag_to_the_users_before_jax_starts(override, flags):
    """The override reaches XLA_FLAGS beside the user's own flags, and XLA accepts it when its backend starts."""
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    run = subprocess.run([sys.executable, "-c", _DETERMINISTIC, override], capture_output=True, text=True,
                         timeout=300, env=env, cwd=pathlib.Path(__file__).parents[2])
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[-2] == f"{flags} | 3.0"


def test_deterministic_after_jax_started_is_refused_unless_already_set(monkeypatch):
    jax.numpy.ones(1).block_until_ready()  # this process's backend is running
    config = ml_collections.ConfigDict({"train": {"deterministic": True}})
    monkeypatch.setenv("XLA_FLAGS", "")
    with pytest.raises(RuntimeError, match="set XLA_FLAGS=--xla_gpu_deterministic_ops=true in the environment"):
        cli.use_deterministic_ops(config)
    monkeypatch.setenv("XLA_FLAGS", cli.DETERMINISTIC_FLAG)
    cli.use_deterministic_ops(config)  # already in force: nothing to do


SAVE_AN_EMPTY_ARRAY = """
import sys, jax.numpy as jnp
from ssm_jax.training import cli
from ssm_jax.training.checkpoint import Checkpointer
fingerprint = {"model": "m", "params": "p", "num_params": 3}
def save():
    checkpointer = Checkpointer(sys.argv[1], fingerprint)
    checkpointer.save(1, {"w": jnp.ones(3)}, {})
    checkpointer.save(2, {"w": jnp.zeros((0, 3))}, {})  # orbax refuses zero-size arrays
cli.run(["train.py"], save)
"""


def test_a_checkpoint_that_cannot_be_written_ends_the_run_at_once_naming_what_is_kept(tmp_path):
    """Orbax's threads of the failed save would otherwise hold the exit for its 5-minute timeout (300 s here)."""
    done = subprocess.run([sys.executable, "-c", SAVE_AN_EMPTY_ARRAY, str(tmp_path)], capture_output=True, text=True,
                          timeout=150, cwd=pathlib.Path(__file__).resolve().parents[2])
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"error: could not write the checkpoint of step 2 to {tmp_path / 'checkpoints'}: ValueError: Cannot " \
           "save arrays with zero size" in done.stderr
    assert "Checkpoints kept: steps [1]; a rerun resumes from step 1." in done.stderr


_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_a_data_worker_reimporting_the_script_ignores_ctrl_c_before_its_imports(script):
    """A spawned data worker runs the main script again as ``__mp_main__``, 5-9 s of imports before the pipeline's
    own code in it ignores the stop signals; a Ctrl-C to the process group then printed a KeyboardInterrupt
    traceback in every worker. The script ignores it first thing, there and only there."""
    body = ast.parse((_ROOT / script).read_text()).body
    guard = next(i for i, node in enumerate(body) if isinstance(node, ast.If))
    assert ast.unparse(body[guard].test) == "__name__ == '__mp_main__'"
    assert [ast.unparse(node) for node in body[1:guard]] == ["import signal"]  # after the docstring, before the rest
    probe = ("import runpy, signal, sys; runpy.run_path(sys.argv[1], run_name='__mp_main__'); "
             "print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)")
    done = subprocess.run([sys.executable, "-c", probe, script], cwd=_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.split() == ["True"], done.stderr


def _spawned_workers(parent: int) -> list:
    """Pids of the spawned multiprocessing children of ``parent`` (not its resource tracker)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(pid))
    return pids


@pytest.mark.slow  # ~60 s: a training run with two data workers
def test_ctrl_c_while_data_workers_start_stops_the_run_without_tracebacks(folder_root, tmp_path):
    run = subprocess.Popen(
        [sys.executable, "train.py", "--config=configs/memorymamba_folder.py:cpu", f"--workdir={tmp_path}",
         f"--config.data.root={folder_root}", "--config.model.num_classes=3", "--config.data.num_workers=2",
         "--config.train.batch_size=8", "--config.train.max_steps=2"],
        cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while not _spawned_workers(run.pid) and run.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert _spawned_workers(run.pid), "no data worker started"
    time.sleep(1.0)  # the workers are importing train.py now
    os.killpg(run.pid, signal.SIGINT)  # as Ctrl-C at a terminal: the whole process group
    _, err = run.communicate(timeout=300)
    assert run.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "stopped on request (SIGINT)" in err
