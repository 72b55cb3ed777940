"""SNARM on MVTec AD, multi-class (all 15 categories, one model and one bank):
``python train.py --config=configs/snarm_mvtec.py --workdir=runs/snarm_mvtec \
--config.model.encoder_weights=wide_resnet50_2.pth``.

The recipe is configs/snarm_common.py's (40,000 steps of batch 16; the bank keeps 10% of at most 1,000,000 training
patches, i.e. 100,000 rows here). The dataset is read from `config.data.root` (default `$SSM_JAX_DATA/mvtec` or
`~/data/mvtec`; layout in `ssm_jax/data/mvtec.py`); `--config.data.source.categories=bottle` trains one category.
"""

from configs import common
from configs.mambaad_common import all_categories
from configs.snarm_common import snarm_config


def get_config():
    return common.finalize(snarm_config("mvtec", common.default_data_root("mvtec"), categories=all_categories()))
