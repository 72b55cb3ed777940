"""MemoryMamba on your own images, one folder per class: ``root/<class_name>/*.png|jpg|bmp|tif``.

    python train.py --config=configs/memorymamba_folder.py --workdir=runs/mine \
        --config.data.root=/path/to/images --config.model.num_classes=5

Classes are the sorted folder names; the split is a seeded, stratified 75/25 (``config.data.source``).
Variants ``:tiny`` (default), ``:small``, ``:base`` pick the model size; ``:cpu`` is a small model at 64 px for a
machine without an accelerator (the network and schedule of ``memorymamba_elpv.py:cpu``, batch 32).
"""

from configs import common
from configs.memorymamba_common import apply_cpu, apply_size, memorymamba_config


def get_config(size: str = "tiny"):
    config = memorymamba_config("folder", 2, common.default_data_root("folder"), test_fraction=0.25, seed=0)
    if size == "cpu":
        apply_cpu(config)
    else:
        apply_size(config, size)
    return common.finalize(config)
