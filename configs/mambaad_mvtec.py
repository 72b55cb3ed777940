"""MambaAD on MVTec AD, multi-class (all 15 categories, one model):
`python train.py --config=configs/mambaad_mvtec.py --workdir=runs/mambaad_mvtec`.

The paper trains 1000 epochs on MVTec AD; the default here is 100 (ADer's benchmark length; 3,629 training
images, ~22.7k steps at batch 16): pass ``--config.train.epochs=1000`` for the paper's run. The dataset is read
from `config.data.root` (default `$SSM_JAX_DATA/mvtec` or `~/data/mvtec`); see `ssm_jax/data/mvtec.py` for the
layout it expects. `--config.data.source.categories=bottle` trains on one category.
"""

from configs import common
from configs.mambaad_common import all_categories, mambaad_config


def get_config():
    config = mambaad_config("mvtec", common.default_data_root("mvtec"), epochs=100, categories=all_categories())
    return common.finalize(config)
