"""Evaluate the latest checkpoint of a workdir on the test split, or predict on a folder of your own images.

    python eval.py --config=configs/memorymamba_elpv.py --workdir=runs/elpv
    python eval.py --config=configs/memorymamba_elpv.py --workdir=runs/elpv --predict_dir=~/new_cells
    python eval.py --config=configs/from_run.py:runs/elpv --workdir=runs/elpv --predict_dir=~/new_cells

The last uses the run's own config.json; predicting reads the run's train_set.json, not the dataset, so a copy of
the run directory is all an inspection station needs.
"""

import signal

if __name__ == "__mp_main__":  # a data worker re-importing this script: a Ctrl-C sent to the whole process
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # group is the main process's to act on; it stops the workers

from absl import app, flags

from ssm_jax.training import cli
from ssm_jax.training.run import Experiment

_CONFIG, _WORKDIR = cli.define_run_flags("The training run's directory (holds checkpoints/).")
_PREDICT_DIR = flags.DEFINE_string("predict_dir", None, "Predict every image under this folder instead of evaluating.")


def evaluate(config, workdir, predict_dir):
    experiment = Experiment.for_eval(config, workdir, predict_only=bool(predict_dir))
    if predict_dir:
        experiment.predict_folder(predict_dir)
    else:
        experiment.evaluate()


def main(argv):
    cli.use_deterministic_ops(_CONFIG.value)
    cli.run(argv, evaluate, _CONFIG.value, _WORKDIR.value, _PREDICT_DIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
