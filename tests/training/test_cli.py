"""The CLI wrapper's exits: bad input is one message with code 1, a run stopped by SIGTERM exits with code 143."""

import pytest

from ssm_jax.training import cli
from ssm_jax.training.preemption import Preempted


def _raise(err):
    raise err


def test_bad_input_exits_with_its_message():
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["train.py"], _raise, ValueError("config.data.root=/nope: no such folder"))
    assert exit_info.value.code == "error: config.data.root=/nope: no such folder"


def test_a_stopped_run_exits_with_143_and_says_how_to_resume(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["train.py"], _raise, Preempted(40, "runs/x/checkpoints"))
    assert exit_info.value.code == cli.PREEMPTED_EXIT_CODE == 143
    assert "after step 40; its checkpoint is in runs/x/checkpoints: run the same command again" in \
        capsys.readouterr().err


def test_other_errors_keep_their_traceback():
    with pytest.raises(RuntimeError, match="bug"):
        cli.run(["train.py"], _raise, RuntimeError("bug"))
