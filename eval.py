"""Evaluate the latest checkpoint of a workdir on the test split, or predict on a folder of your own images.

    python eval.py --config=configs/memorymamba_elpv.py --workdir=runs/elpv
    python eval.py --config=configs/memorymamba_elpv.py --workdir=runs/elpv --predict_dir=~/new_cells
"""

from absl import app, flags, logging
from ml_collections import config_flags

from ssm_jax.training.cli import exit_on_user_error, parse_flags
from ssm_jax.training.mesh import initialize_distributed
from ssm_jax.training.run import Experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's directory (holds checkpoints/).")
_PREDICT_DIR = flags.DEFINE_string("predict_dir", None, "Predict every image under this folder instead of evaluating.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # keep orbax's per-save INFO lines off the progress bar
    initialize_distributed()
    exit_on_user_error(evaluate, _CONFIG.value, _WORKDIR.value, _PREDICT_DIR.value)


def evaluate(config, workdir, predict_dir):
    experiment = Experiment(config, workdir)
    experiment.restore_for_eval()
    if predict_dir:
        experiment.predict_folder(predict_dir)
    else:
        experiment.evaluate()


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
