"""A trained run's own config, read back from its ``config.json``: evaluate it or predict with it without repeating
the config file and overrides it was trained with.

    python eval.py --config=configs/from_run.py:runs/parts --workdir=runs/parts --predict_dir=~/new_parts
    python eval.py --config=configs/from_run.py:runs/parts --workdir=runs/parts --config.eval.flag_threshold=0.31

Overrides apply on top as with any config; lists in the JSON come back as tuples, as the config files write them.
"""

from ssm_jax.training.log import read_config


def get_config(workdir: str = ""):
    if not workdir:
        raise ValueError("configs/from_run.py needs the run's directory: --config=configs/from_run.py:<workdir>")
    return read_config(workdir)
