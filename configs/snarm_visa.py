"""SNARM on VisA, multi-class (all 12 objects, one model and one bank):
`python train.py --config=configs/snarm_visa.py --workdir=runs/snarm_visa`.

Split: VisA's ``split_csv/1cls.csv``; recipe: configs/snarm_common.py. The dataset is read from `config.data.root`
(default `$SSM_JAX_DATA/visa` or `~/data/visa`; layout in `ssm_jax/data/visa.py`).
"""

from configs import common
from configs.mambaad_common import all_categories
from configs.snarm_common import snarm_config


def get_config():
    return common.finalize(snarm_config("visa", common.default_data_root("visa"), categories=all_categories(),
                                        split_file="split_csv/1cls.csv"))
