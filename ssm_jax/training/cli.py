"""What train.py and eval.py share: flag parsing with readable config errors, and clean exits on bad input."""

from __future__ import annotations

import linecache
import os
import re
import sys
from pathlib import Path

import jax
from absl import app, flags, logging
from jax._src import xla_bridge  # backends_are_initialized: JAX has no public way to ask
from ml_collections import config_flags

from ssm_jax.training.checkpoint import CheckpointError, CheckpointSaveError
from ssm_jax.training.loop import NonFiniteLossError
from ssm_jax.training.mesh import initialize_distributed
from ssm_jax.training.preemption import Preempted, StopSignal, raise_on_sigterm

# Errors that mean "fix the input", shown as one message instead of a traceback when this project raised them
# (``raised_by_project``): the same types from inside NumPy or JAX are a fault to trace, and keep their traceback.
USER_ERRORS = (FileNotFoundError, ValueError, CheckpointError, NonFiniteLossError)


def raised_by_project(err: BaseException) -> bool:
    """Whether ``err`` comes from a ``raise`` statement of this project's code (its innermost frame), where every
    message of the ``USER_ERRORS`` types says what input to fix: the packages (installed or in the checkout) and,
    beside the running script (train.py, eval.py), the config files. Not so an error from a library's Python code,
    or from a compiled function the project called (NumPy's, whose innermost Python frame is the caller's)."""
    installed, script = Path(__file__).resolve().parents[2], Path(sys.argv[0]).resolve().parent
    project = tuple(str(folder / name) for folder, name in ((installed, "ssm_jax"), (installed, "kernels"),
                                                            (script, "configs"), (script, "train.py"),
                                                            (script, "eval.py")))
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return True
    filename = tb.tb_frame.f_code.co_filename
    return (str(Path(filename).resolve()).startswith(project)
            and linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise"))


def _at(config, path: list[str]):
    """The node of ``config`` at ``path`` (dotted keys); None where a key is missing."""
    node = config
    for key in path:
        node = node.get(key) if hasattr(node, "get") else None
    return node


def _fields_at(config, path: list[str]) -> str:
    """The fields of ``config`` at ``path`` (a section), listed for the message of a key that is not one of them;
    empty where the section cannot be reached."""
    node = _at(config, path)
    if not hasattr(node, "keys"):
        return ""
    return f"; the fields there: {', '.join(sorted(node.keys()))}"


def _unknown_key_message(argv: list[str], err: Exception, config=None) -> str | None:
    """Name the offending ``--config.a.b`` override, ml_collections' closest valid key if it has one, the fields at
    that level of ``config`` (the loaded config file, where there is one), and the config files beside it that have
    the field (``eval.tta`` given to an anomaly detector's config: the classifiers')."""
    # ml_collections' message is the key, quoted, and with a close match a 'Did you mean "x" instead of "y"?' line
    found = re.search(r"\w+", str(err))
    if found is None:
        return None
    key = found.group(0)
    suggestion = re.search(r'Did you mean "(\w+)"', str(err))
    for arg in argv:
        match = re.match(r"--?config\.([\w.]+)", arg)
        path = match.group(1).split(".") if match else []
        if key in path:
            hint = f" (did you mean {suggestion.group(1)!r}?)" if suggestion else ""
            fields = _fields_at(config, path[:path.index(key)]) if config is not None else ""
            elsewhere = _files_with_field(_config_arg(argv), path[:path.index(key) + 1]) if config is not None else ""
            return (f"unknown config key in {arg.split('=')[0]!r}: there is no field {key!r} at that level{hint}"
                    f"{fields or '; see the config file for the valid fields'}{elsewhere}")
    return None


def _config_arg(argv: list[str]) -> str | None:
    """The value of ``--config=FILE[:variant]`` or ``--config FILE[:variant]``; None without one."""
    pairs = zip(argv, argv[1:] + [None])
    return next((a.split("=", 1)[1] if "=" in a else b for a, b in pairs
                 if a.split("=")[0] in ("--config", "-config")), None)


def _loaded_config(argv: list[str]):
    """The ``--config`` file's config without the overrides (one of which failed, so ml_collections kept none), read
    by the flag's own parser; None where it cannot be had."""
    given = _config_arg(argv)
    try:
        return None if given is None else flags.FLAGS["config"].parser.parse(given)
    except Exception:  # noqa: BLE001 - only a help for a message being built: any failure means no listing
        return None


def _files_with_field(given: str | None, path: list[str]) -> str:
    """For the message of a field the ``--config`` file lacks: the config files beside it (their default variant)
    whose config has it, with their task ("; eval.tta is a field of memorymamba_elpv.py (classification), ...");
    empty where none has it."""
    if given is None:
        return ""
    holders = []
    for sibling in sorted(Path(given.split(":")[0]).parent.glob("*.py")):
        # A helper module is no config; ml_collections loads every file under one module name, so it would find the
        # previous config's get_config there.
        if "def get_config(" not in sibling.read_text(errors="replace"):
            continue
        try:
            node = flags.FLAGS["config"].parser.parse(str(sibling))
        except Exception:  # noqa: BLE001 - helpers, and from_run.py (which needs a run), are no configs to list
            continue
        task = _at(node, ["task"])
        if _at(node, path) is not None:
            holders.append(f"{sibling.name} ({task})" if task else sibling.name)
    if not holders:
        return ""
    shown = ", ".join(holders[:4]) + (f" and {len(holders) - 4} more" if len(holders) > 4 else "")
    return f"; {'.'.join(path)} is a field of {shown}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns an unknown ``--config.*`` key, or a config file that does not load, into a
    one-line error (exit code 1)."""
    try:
        remaining = flags.FLAGS(argv)
        getattr(flags.FLAGS["config"].value, "task", None)  # ml_collections defers a load error to first use
        return remaining
    except OSError as err:  # the file is missing or get_config() raised: ml_collections' report, less its frames
        sys.exit(f"error: cannot load the --config file: {_config_load_error(str(err))}")
    except (AttributeError, KeyError) as err:
        message = _unknown_key_message(argv, err, _loaded_config(argv))
        if message is None:
            raise
        sys.exit(f"error: {message}")
    except flags.Error as err:
        lines = str(err).strip().splitlines()
        if any(line.startswith("Traceback") for line in lines):  # get_config() raised: say what, not where
            lines = [lines[0], lines[-1]]
        given = _config_arg(argv) or ""
        if ":" in given and "get_config() takes 0 positional arguments" in str(err):
            file, variant = given.split(":", 1)
            sys.exit(f"error: {file} has no variants, so not {variant!r}: use --config={file} and change what differs "
                     f"with --config.* overrides (configs/*_folder.py:cpu and the ELPV configs' *_cpu variants "
                     f"show the CPU settings)")
        sys.exit(f"error: {' '.join(lines)}\nusage: {argv[0]} --config=configs/<model>_<dataset>.py --workdir=DIR "
                 f"[--config.section.key=value ...]")


def _config_load_error(report: str) -> str:
    """The lines of ml_collections' load-failure report that say what failed: the paths tried and their errors."""
    lines = [line.strip() for line in report.strip().splitlines()]
    tried = [line for line in lines[1:] if line and not line.startswith("Attempted")]
    return "; ".join(tried) or lines[0]


def define_run_flags(workdir_help: str):
    """The required ``--config`` (locked, overridable with ``--config.a.b=v``) and ``--workdir`` flags."""
    config = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flags_as_required(["config", "workdir"])
    return config, workdir


DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"


def use_deterministic_ops(config) -> None:
    """With ``config.train.deterministic``, add XLA's flag for run-to-run deterministic GPU programs to ``XLA_FLAGS``.

    GPU runs of one seed otherwise differ: XLA autotunes convolutions and matmuls afresh in each process and some
    reductions use atomics, so the sums' order changes; the differences grow over training. The flag keeps to
    deterministic algorithms and turns autotuning off (slower; the Pallas scan uses no atomics and needs nothing).
    XLA reads its flags once, when JAX first starts a backend, hence a process-level setting called before that.
    """
    if not config.train.deterministic or DETERMINISTIC_FLAG in os.environ.get("XLA_FLAGS", ""):
        return
    if xla_bridge.backends_are_initialized():
        raise RuntimeError("train.deterministic must be applied before JAX starts its backends; "
                           f"set XLA_FLAGS={DETERMINISTIC_FLAG} in the environment instead")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DETERMINISTIC_FLAG}".strip()


def out_of_memory_message(err: Exception) -> str:
    """What ran out (XLA's first line) and the settings that trade memory for something else; with a share of the
    GPU already set (several runs on one GPU), that share and what to do about it."""
    reason = str(err).strip().splitlines()[0].rstrip(".")
    reason = reason if len(reason) <= 300 else reason[:300] + " ..."
    share = os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
    sharing = (f"This process had XLA_PYTHON_CLIENT_MEM_FRACTION={share} of the GPU's memory: with other runs on the "
               "GPU, run fewer at once, each with a larger share (the shares summing to at most 0.9)" if share else
               "Several processes on one GPU: JAX takes 75 % of its memory for each, so give each a share with "
               "XLA_PYTHON_CLIENT_MEM_FRACTION (e.g. 0.45 for two) or set XLA_PYTHON_CLIENT_PREALLOCATE=false")
    return (f"the accelerator ran out of memory ({reason}). Checkpoints already written are kept. To fit the step: "
            "lower --config.train.batch_size, or keep the batch and raise "
            "--config.train.grad_accum_steps (the same update in smaller pieces), or, where the model's config has "
            f"them, set --config.model.remat=block or --config.model.dtype=bfloat16. {sharing}")


def run(argv: list[str], fn, *args):
    """Body of a CLI ``main``: quiet logging, join a multi-process job, run ``fn``; bad input exits with code 1
    and its message instead of a traceback, as does running out of accelerator memory (with what to change) or a
    checkpoint that cannot be written (at once); a run stopped on request (checkpointed, or outside the training loop,
    where it unwinds so that its data workers stop too) exits with the shell's code for the signal: 143 SIGTERM, 130
    Ctrl-C."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # keep orbax's per-save INFO lines off the progress bar
    if hasattr(sys.stdout, "reconfigure"):  # a report's class names in a locale that cannot print them: escaped
        sys.stdout.reconfigure(errors="backslashreplace")
    initialize_distributed()
    raise_on_sigterm()
    try:
        return fn(*args)
    except CheckpointSaveError as err:  # without os._exit the failed save's threads hold the exit for 5 minutes
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    except USER_ERRORS as err:
        if not raised_by_project(err):
            raise
        sys.exit(f"error: {err}")
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        sys.exit(f"error: {out_of_memory_message(err)}")
    except Preempted as err:
        print(err, file=sys.stderr, flush=True)
        sys.exit(err.exit_code)
    except (StopSignal, KeyboardInterrupt) as err:  # outside the training loop, or a second Ctrl-C in it
        name, code = ("SIGTERM", err.exit_code) if isinstance(err, StopSignal) else ("Ctrl-C", 130)
        print(f"\nstopped on request ({name}); any checkpoint already written is kept: run the same command "
              "again to go on", file=sys.stderr, flush=True)
        sys.exit(code)
