"""MambaAD on ELPV solar cells (ships offline with elpv-dataset; no data download needed).

Variants (``--config=configs/mambaad_elpv.py:<variant>``):
  defects (default)  dataset "elpv_ad": train on the defect-free cells (p = 0), test on held-out defect-free cells
                     and every defective one (p >= 1/3 is anomalous). ELPV has no pixel masks, so only the image
                     metrics (AU-ROC, AP, F1-max) are reported; categories are the cell types (mono, poly).
  synthetic          dataset "synthetic" with ``bases=("elpv",)``: real defect-free ELPV cells with synthetic
                     defects (scratches, cracks, spots, holes, stains) and their masks, so all seven metrics.
  defects_cpu,       the same data at 64 px with a shallow decoder, batch 8 and 2 epochs: a smoke run for a CPU,
  synthetic_cpu      not a benchmark (``defects_cpu``: 3.5 minutes on 2 cores, README).

The paper's recipe otherwise (configs/mambaad_common.py), trained 100 epochs (ADer's benchmark length; the paper
uses 1000 on MVTec AD). Pass torchvision ImageNet weights for the encoder with
``--config.model.encoder_weights=resnet34.pth``; a random encoder gives a weak detector.
"""

from configs import common
from configs.mambaad_common import apply_cpu, mambaad_config

VARIANTS = ("defects", "synthetic", "defects_cpu", "synthetic_cpu")


def get_config(variant: str = "defects"):
    common.check_variant("mambaad_elpv", variant, VARIANTS)
    if variant.startswith("defects"):
        config = mambaad_config("elpv_ad", None, epochs=100, test_normal_fraction=0.25, seed=0)
    else:
        config = mambaad_config("synthetic", None, epochs=100, bases=("elpv",), num_train=1000, num_test=400,
                                anomaly_fraction=0.5, seed=0)
    if variant.endswith("_cpu"):
        apply_cpu(config)
        if variant == "synthetic_cpu":
            config.data.source.update(num_train=200, num_test=100)
    return common.finalize(config)
