"""One training run per workdir: a second one is refused by name while the first runs, and a killed run leaves no
lock behind."""

import os
import signal
import subprocess
import sys

import pytest

from ssm_jax.training.workdir_lock import workdir_lock

HOLD = "import sys, time; from ssm_jax.training.workdir_lock import workdir_lock\n" \
       "with workdir_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)"


def test_a_second_run_is_refused_while_the_first_holds_the_workdir(tmp_path):
    with workdir_lock(tmp_path / "run"):
        with pytest.raises(ValueError, match=rf"run is in use by another run \(pid {os.getpid()} on .*\); two runs"):
            with workdir_lock(tmp_path / "run"):
                pass
    with workdir_lock(tmp_path / "run"):  # released at the end of the block
        pass


def test_a_killed_run_leaves_no_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=rf"pid {holder.pid} on "):
            with workdir_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with workdir_lock(tmp_path):  # the operating system released the dead run's lock
        pass


def test_a_run_that_wrote_nothing_leaves_no_workdir_behind(tmp_path):
    with pytest.raises(RuntimeError, match="refused"):
        with workdir_lock(tmp_path / "new"):
            raise RuntimeError("config refused")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with workdir_lock(tmp_path / "empty"):
        pass
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())  # the user's folder stays


def test_a_run_that_wrote_keeps_its_workdir_and_lock_file(tmp_path):
    with workdir_lock(tmp_path / "run"):
        (tmp_path / "run" / "config.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "config.json"]
