"""SNARM on MVTec 3D-AD, RGB images only, multi-class (all 10 categories, one model and one bank):
`python train.py --config=configs/snarm_mvtec3d.py --workdir=runs/snarm_mvtec3d`.

Trained on the ``train`` split's good images (``validation`` is not used), tested on ``test``; recipe:
configs/snarm_common.py. The dataset is read from `config.data.root` (default `$SSM_JAX_DATA/mvtec3d` or
`~/data/mvtec3d`; layout in `ssm_jax/data/mvtec3d.py`).
"""

from configs import common
from configs.mambaad_common import all_categories
from configs.snarm_common import snarm_config


def get_config():
    return common.finalize(snarm_config("mvtec3d", common.default_data_root("mvtec3d"), categories=all_categories()))
