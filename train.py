"""Train a model from an ml-collections config, resuming from <workdir>/checkpoints, then evaluate.

    python train.py --config=configs/memorymamba_elpv.py --workdir=runs/elpv [--config.optim.lr=1e-4 ...]
"""

import signal

if __name__ == "__mp_main__":  # a data worker re-importing this script: a Ctrl-C sent to the whole process
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # group is the main process's to act on; it stops the workers

from absl import app

from ssm_jax.training import cli
from ssm_jax.training.run import train_and_evaluate

_CONFIG, _WORKDIR = cli.define_run_flags("Directory for checkpoints, metrics.jsonl and eval outputs.")


def main(argv):
    cli.use_deterministic_ops(_CONFIG.value)
    cli.run(argv, train_and_evaluate, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
