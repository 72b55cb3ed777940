"""Train a model from an ml-collections config, resuming from <workdir>/checkpoints, then evaluate.

    python train.py --config=configs/memorymamba_elpv.py --workdir=runs/elpv [--config.optim.lr=1e-4 ...]
"""

from absl import app, flags, logging
from ml_collections import config_flags

from ssm_jax.training.cli import exit_on_user_error, parse_flags
from ssm_jax.training.mesh import initialize_distributed
from ssm_jax.training.run import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and eval outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # keep orbax's per-save INFO lines off the progress bar
    initialize_distributed()
    exit_on_user_error(train_and_evaluate, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
