"""MemoryMamba on ALUMINUM (paper 000):
`python train.py --config=configs/memorymamba_aluminum.py[:tiny|small|base] --workdir=runs/memorymamba_aluminum`.

The dataset is read from `config.data.root` (default `$SSM_JAX_DATA/aluminum` or `~/data/aluminum`); see
`ssm_jax/data/aluminum.py` for the on-disk layout it expects.

The coarse-grained memory holds 4 slots: the one memory size paper 000 states, where its Fig. 4 peaks on Aluminum
(sec. 5.6, "a peak performance at a memory size of 4"); the fine-grained memory keeps the shared default.
"""

from configs import common
from configs.memorymamba_common import apply_size, memorymamba_config


def get_config(size: str = "tiny"):
    config = memorymamba_config("aluminum", 4, common.default_data_root("aluminum"))
    apply_size(config, size)
    config.model.coarse_size = 4
    return common.finalize(config)
