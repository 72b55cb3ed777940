"""A trained run's own config, read back from its ``config.json``: evaluate it or predict with it without repeating
the config file and overrides it was trained with.

    python eval.py --config=configs/from_run.py:runs/parts --workdir=runs/parts --predict_dir=~/new_parts
    python eval.py --config=configs/from_run.py:runs/parts --workdir=runs/parts --config.eval.flag_threshold=0.31

Overrides apply on top as with any config; lists in the JSON come back as tuples, as the config files write them.
"""

import json
from pathlib import Path

import ml_collections

from configs import common


def _tuples(value):
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def get_config(workdir: str = ""):
    if not workdir:
        raise ValueError("configs/from_run.py needs the run's directory: --config=configs/from_run.py:<workdir>")
    path = Path(workdir).expanduser() / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected the config.json that train.py writes in its workdir")
    return common.finalize(ml_collections.ConfigDict(_tuples(json.loads(path.read_text()))))
