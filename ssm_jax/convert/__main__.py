"""Turn an official checkpoint into a run directory that eval.py evaluates and train.py treats as finished.

    python -m ssm_jax.convert KIND CHECKPOINT WORKDIR [--config=configs/mambaad_mvtec.py[:variant]]
                              [--config.section.key=value ...]

    python -m ssm_jax.convert mambaad mambaad_mvtec.pth runs/mambaad_official --config.data.root=~/data/mvtec

KIND is ``mambaad``: the official lewandofskee/MambaAD checkpoint (its ``{'net': ...}`` dict) or a state_dict.
ResNet kinds are encoders, not runs: train with them as ``--config.model.encoder_weights=PATH``. The config
(default configs/mambaad_mvtec.py, overridable as in train.py) gives the data, optimizer and training length; its
model fields are replaced by the checkpoint's architecture. Writes WORKDIR/checkpoints/<last step> and
WORKDIR/config.json (a WORKDIR that has checkpoints is refused), lists the training split (without decoding it; the
dataset must be there) to know the last step, and prints the eval.py command, with the --config overrides the
converted model needs.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from ssm_jax.convert.checkpoint import cli_overrides, convert_to_workdir
from ssm_jax.training import cli

DEFAULT_CONFIG = Path("configs/mambaad_mvtec.py")
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository this package is installed from (editable installs)
USAGE = ("usage: python -m ssm_jax.convert KIND CHECKPOINT WORKDIR [--config=configs/mambaad_mvtec.py[:variant]] "
         "[--config.section.key=value ...]")


def default_config() -> str:
    """``DEFAULT_CONFIG`` as written in the repository's root; elsewhere the ``CHECKOUT``'s, so that the command runs
    from any folder."""
    beside_package = CHECKOUT / DEFAULT_CONFIG
    return str(beside_package if not DEFAULT_CONFIG.is_file() and beside_package.is_file() else DEFAULT_CONFIG)


def _config_file(argv: list[str]) -> str:
    """The file ``--config`` names in ``argv``, without its variant ('' when none is named)."""
    for i, arg in enumerate(argv):
        if match := re.fullmatch(r"--?config(?:=(.*))?", arg):
            spec = match[1] if match[1] is not None else (argv[i + 1] if i + 1 < len(argv) else "")
            return spec.split(":")[0]
    return ""


def _configs_importable(config_file: str) -> None:
    """The config files import their folder as the package ``configs`` (``from configs import common``), found from
    the repository's root only: run from elsewhere, the folder above the file's ``configs/`` joins the import path,
    as train.py's own folder does for it."""
    folder = Path(config_file).expanduser().resolve().parent
    if config_file and folder.name == "configs" and (folder / "__init__.py").is_file() \
            and str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))


def _config_first(argv: list[str]) -> list[str]:
    """``argv`` with ``--config`` (and a value given apart) moved first: ml_collections reads overrides after it."""
    rest = argv[1:]
    for i, arg in enumerate(rest):
        if re.match(r"--?config=", arg):
            return [argv[0], arg, *rest[:i], *rest[i + 1:]]
        if re.fullmatch(r"--?config", arg) and i + 1 < len(rest):
            return [argv[0], arg, rest[i + 1], *rest[:i], *rest[i + 2:]]
    return argv


def parse(argv: list[str]) -> tuple[list[str], str, ml_collections.ConfigDict]:
    """(positional arguments, the --config spec, the locked config with its overrides); flags may come anywhere."""
    if not any(re.match(r"--?config(=|$)", arg) for arg in argv[1:]):
        argv = [argv[0], f"--config={default_config()}", *argv[1:]]  # first: overrides must follow it
    argv = _config_first(argv)
    _configs_importable(_config_file(argv[1:]))
    values = flags.FlagValues()
    try:
        holder = config_flags.DEFINE_config_file("config", None, flag_values=values, sys_argv=argv, lock_config=True)
        positional = values(argv)[1:]
        config = holder.value.copy_and_resolve_references()  # ml_collections defers a bad file's error to first use
    except (AttributeError, KeyError) as err:  # an override of a field the config does not have
        key = str(err).strip("\"'")
        raise ValueError(f"unknown config key {key!r}: the config has no such field; see the config file for the "
                         f"valid fields") from err
    except (flags.Error, OSError) as err:
        raise ValueError(f"{err}\n{USAGE}") from err
    return positional, values["config"].config_filename, config


def main(argv: list[str]) -> None:
    if any(arg in ("-h", "--help") for arg in argv[1:]):
        print(__doc__)
        return
    logging.set_verbosity(logging.WARNING)  # keep orbax's INFO lines off the terminal
    try:
        positional, spec, config = parse(argv)
        if len(positional) != 3:
            raise ValueError(f"expected KIND CHECKPOINT WORKDIR, got {positional}\n{USAGE}")
        kind, checkpoint, workdir = positional
        config, step = convert_to_workdir(kind, checkpoint, workdir, config)
        overrides = cli_overrides(config, parse([argv[0], f"--config={spec}"])[2])
    except (*cli.USER_ERRORS, FileExistsError) as err:
        sys.exit(f"error: {err}")
    print(f"converted {checkpoint} -> {Path(workdir) / 'checkpoints' / str(step)} (step {step}: the end of the "
          f"config's training, so train.py on it only evaluates)")
    if any(o.startswith("--config.model.") for o in overrides):
        print("the checkpoint's architecture differs from the config file's: eval.py needs the overrides below")
    eval_script = Path("eval.py") if Path("eval.py").is_file() else CHECKOUT / "eval.py"
    print("evaluate with:\n  " + " ".join(["python", shlex.quote(str(eval_script)), f"--config={shlex.quote(spec)}",
                                          f"--workdir={shlex.quote(str(workdir))}", *overrides]))


if __name__ == "__main__":
    main(sys.argv)
