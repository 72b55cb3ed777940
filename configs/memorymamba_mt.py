"""MemoryMamba on MT (paper 000):
`python train.py --config=configs/memorymamba_mt.py[:tiny|small|base] --workdir=runs/memorymamba_mt`.

The dataset is read from `config.data.root` (default `$SSM_JAX_DATA/mt` or `~/data/mt`); see
`ssm_jax/data/mt.py` for the on-disk layout it expects.
"""

from configs import common
from configs.memorymamba_common import apply_size, memorymamba_config


def get_config(size: str = "tiny"):
    config = memorymamba_config("mt", 6, common.default_data_root("mt"))
    apply_size(config, size)
    return common.finalize(config)
