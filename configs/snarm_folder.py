"""SNARM on your own parts, laid out as MVTec AD under ``config.data.root`` (configs/mambaad_folder.py shows the
layout; pixel masks optional):

    python train.py --config=configs/snarm_folder.py --workdir=runs/parts_snarm --config.data.root=/path/to/parts \
        --config.model.encoder_weights=wide_resnet50_2.pth

The recipe is configs/snarm_common.py's, on whole images (``data.center_crop`` 1: the released 392-of-448 crop is
for the benchmarks' centred objects, and would leave a defect near a part's edge unseen).
"""

from configs import common
from configs.mambaad_common import all_categories
from configs.snarm_common import snarm_config


def get_config():
    config = snarm_config("mvtec", common.default_data_root("parts"), categories=all_categories(), require_masks=False)
    config.data.center_crop = 1.0
    return common.finalize(config)
