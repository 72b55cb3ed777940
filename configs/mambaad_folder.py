"""MambaAD on your own parts, laid out as MVTec AD under ``config.data.root`` (one folder per product):

    <root>/<product>/train/good/*.png                      normal images to learn from
    <root>/<product>/test/good/*.png                       normal test images
    <root>/<product>/test/<defect>/*.png                   defective test images, one folder per defect type
    <root>/<product>/ground_truth/<defect>/<stem>_mask.png optional pixel masks

    python train.py --config=configs/mambaad_folder.py --workdir=runs/parts --config.data.root=/path/to/parts \
        --config.model.encoder_weights=resnet34.pth

Masks are optional (``data.source.require_masks`` False): a defective image without one is scored by the image
metrics only. A mask is the image's size; any non-zero pixel is defective (0/255 or 0/1; an RGBA export with a
transparent background is read by its alpha, a palette one with black as its background). Every product folder is
read into one model (MambaAD's multi-class setting); ``--config.data.source.categories=<product>`` trains one.
Variants: ``:gpu`` (default) is MambaAD's recipe on MVTec AD (256 px, 100 epochs); ``:cpu`` is a smoke run for a
machine without an accelerator (the network and schedule of ``mambaad_elpv.py:defects_cpu``: 64 px, batch 8, 2
epochs).
"""

from configs import common
from configs.mambaad_common import all_categories, apply_cpu, mambaad_config

VARIANTS = ("gpu", "cpu")


def get_config(variant: str = "gpu"):
    common.check_variant("mambaad_folder", variant, VARIANTS)
    config = mambaad_config("mvtec", common.default_data_root("parts"), epochs=100, categories=all_categories(),
                            require_masks=False)
    if variant == "cpu":
        apply_cpu(config)
    return common.finalize(config)
