"""MambaAD on VisA, multi-class (all 12 objects, one model):
`python train.py --config=configs/mambaad_visa.py --workdir=runs/mambaad_visa`.

Split: VisA's ``split_csv/1cls.csv``. Default 100 epochs (ADer's benchmark length; the paper trains longer, as on
MVTec AD: pass ``--config.train.epochs``). The dataset is read from `config.data.root` (default
`$SSM_JAX_DATA/visa` or `~/data/visa`); see `ssm_jax/data/visa.py` for the layout it expects.
"""

from configs import common
from configs.mambaad_common import all_categories, mambaad_config


def get_config():
    config = mambaad_config("visa", common.default_data_root("visa"), epochs=100, categories=all_categories(),
                            split_file="split_csv/1cls.csv")
    return common.finalize(config)
