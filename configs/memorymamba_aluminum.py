"""MemoryMamba on ALUMINUM (paper 000): `python train.py --config=configs/memorymamba_aluminum.py[:tiny|small|base]`.

The dataset is read from `config.data.root` (default `$SSM_JAX_DATA/aluminum` or `~/data/aluminum`); see
`ssm_jax/data/aluminum.py` for the on-disk layout it expects.
"""

from configs import common
from configs.memorymamba_common import apply_size, memorymamba_config


def get_config(size: str = "tiny"):
    config = memorymamba_config("aluminum", 4, common.default_data_root("aluminum"))
    apply_size(config, size)
    return common.finalize(config)
