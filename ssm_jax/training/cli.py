"""What train.py and eval.py share: flag parsing with readable config errors, and clean exits on bad input."""

from __future__ import annotations

import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ssm_jax.training.checkpoint import CheckpointError
from ssm_jax.training.loop import NonFiniteLossError
from ssm_jax.training.mesh import initialize_distributed
from ssm_jax.training.preemption import Preempted

# Errors that mean "fix the input", shown as one message instead of a traceback.
USER_ERRORS = (FileNotFoundError, ValueError, CheckpointError, NonFiniteLossError)
# Exit status of a run stopped by SIGTERM after checkpointing (128 + 15, the shell's convention for SIGTERM).
PREEMPTED_EXIT_CODE = 143


def _unknown_key_message(argv: list[str], err: Exception) -> str | None:
    """Name the offending ``--config.a.b`` override and the valid keys at its level, if that is what failed."""
    key = str(err).strip("\"'")
    for arg in argv:
        match = re.match(r"--?config\.([\w.]+)", arg)
        if match and match.group(1).split(".")[-1] == key:
            return f"unknown config key in {arg.split('=')[0]!r}: there is no field {key!r} at that level"
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns an unknown ``--config.*`` key into a one-line error (exit code 2)."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as err:
        message = _unknown_key_message(argv, err)
        if message is None:
            raise
        sys.exit(f"error: {message}; see the config file for the valid fields.")
    except flags.Error as err:
        sys.exit(f"error: {err}\nusage: {argv[0]} --config=configs/<model>_<dataset>.py --workdir=DIR "
                 f"[--config.section.key=value ...]")


def define_run_flags(workdir_help: str):
    """The required ``--config`` (locked, overridable with ``--config.a.b=v``) and ``--workdir`` flags."""
    config = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flags_as_required(["config", "workdir"])
    return config, workdir


def run(argv: list[str], fn, *args):
    """Body of a CLI ``main``: quiet logging, join a multi-process job, run ``fn``; bad input exits with code 1
    and its message instead of a traceback; a run stopped by SIGTERM (checkpointed) exits with code 143."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # keep orbax's per-save INFO lines off the progress bar
    initialize_distributed()
    try:
        return fn(*args)
    except USER_ERRORS as err:
        sys.exit(f"error: {err}")
    except Preempted as err:
        print(err, file=sys.stderr, flush=True)
        sys.exit(PREEMPTED_EXIT_CODE)
