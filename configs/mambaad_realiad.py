"""MambaAD on Real-IAD, multi-class (all 30 objects, one model):
`python train.py --config=configs/mambaad_realiad.py --workdir=runs/mambaad_realiad`.

Images from ``realiad_1024/`` with the ``realiad_jsons/`` split (the multi-view UIAD split; every view scored as an
image). Default 100 epochs (ADer's benchmark length; the official config trains 1000; Real-IAD is large, so even 100
is a long run: lower ``--config.train.epochs`` to fit a budget). The dataset is read
from `config.data.root` (default `$SSM_JAX_DATA/realiad` or `~/data/realiad`); see `ssm_jax/data/realiad.py`.
"""

from configs import common
from configs.mambaad_common import all_categories, mambaad_config


def get_config():
    config = mambaad_config("realiad", common.default_data_root("realiad"), epochs=100, categories=all_categories(),
                            image_dir="realiad_1024", json_dir="realiad_jsons")
    return common.finalize(config)
