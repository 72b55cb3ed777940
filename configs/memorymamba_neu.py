"""MemoryMamba on NEU (paper 000):
`python train.py --config=configs/memorymamba_neu.py[:tiny|small|base] --workdir=runs/memorymamba_neu`.

The dataset is read from `config.data.root` (default `$SSM_JAX_DATA/neu` or `~/data/neu`); see
`ssm_jax/data/neu.py` for the on-disk layout it expects.
"""

from configs import common
from configs.memorymamba_common import apply_size, memorymamba_config


def get_config(size: str = "tiny"):
    config = memorymamba_config("neu", 6, common.default_data_root("neu"))
    apply_size(config, size)
    return common.finalize(config)
