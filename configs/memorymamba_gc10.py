"""MemoryMamba on GC10 (paper 000):
`python train.py --config=configs/memorymamba_gc10.py[:tiny|small|base] --workdir=runs/memorymamba_gc10`.

The dataset is read from `config.data.root` (default `$SSM_JAX_DATA/gc10` or `~/data/gc10`); see
`ssm_jax/data/gc10.py` for the on-disk layout it expects.
"""

from configs import common
from configs.memorymamba_common import apply_size, memorymamba_config


def get_config(size: str = "tiny"):
    config = memorymamba_config("gc10", 10, common.default_data_root("gc10"))
    apply_size(config, size)
    return common.finalize(config)
