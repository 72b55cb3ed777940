"""SNARM on your own parts, laid out as MVTec AD under ``config.data.root`` (configs/mambaad_folder.py shows the
layout; pixel masks optional):

    python train.py --config=configs/snarm_folder.py --workdir=runs/parts_snarm --config.data.root=/path/to/parts \
        --config.model.encoder_weights=wide_resnet50_2.pth

The recipe is configs/snarm_common.py's, on whole images (``data.center_crop`` 1: the released 392-of-448 crop is
for the benchmarks' centred objects, and would leave a defect near a part's edge unseen). Variants: ``:gpu``
(default) is that recipe; ``:cpu`` is a smoke run for a machine without an accelerator (the network and schedule of
``snarm_elpv.py:defects_cpu``: 64 px, ResNet18 features, batch 8, 300 steps; weights ``resnet18.pth``).
"""

from configs import common
from configs.mambaad_common import all_categories
from configs.snarm_common import apply_cpu, snarm_config

VARIANTS = ("gpu", "cpu")


def get_config(variant: str = "gpu"):
    common.check_variant("snarm_folder", variant, VARIANTS)
    config = snarm_config("mvtec", common.default_data_root("parts"), categories=all_categories(), require_masks=False)
    config.data.center_crop = 1.0
    if variant == "cpu":
        apply_cpu(config)
    return common.finalize(config)
