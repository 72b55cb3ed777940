"""SNARM on ELPV solar cells (ships offline with elpv-dataset; no data download needed).

Variants (``--config=configs/snarm_elpv.py:<variant>``), the same data as configs/mambaad_elpv.py:
  defects (default)  dataset "elpv_ad": the bank and training use the defect-free cells (p = 0), tested on held-out
                     defect-free cells and every defective one (p >= 1/3 is anomalous); image metrics only (ELPV has
                     no pixel masks); categories are the cell types (mono, poly).
  synthetic          dataset "synthetic" with ``bases=("elpv",)``: defect-free cells with drawn defects and masks at
                     test time, so all seven metrics.
  defects_cpu,       the same data at 64 px with ResNet18 features and a small head (configs/snarm_common.py
  synthetic_cpu      ``apply_cpu``), 300 steps: a smoke run that finishes on a laptop CPU, not a benchmark.

Recipe: configs/snarm_common.py. Pass ImageNet weights for the encoder with
``--config.model.encoder_weights=wide_resnet50_2.pth`` (``resnet18.pth`` for the _cpu variants).
"""

from configs import common
from configs.snarm_common import apply_cpu, snarm_config

VARIANTS = ("defects", "synthetic", "defects_cpu", "synthetic_cpu")


def get_config(variant: str = "defects"):
    common.check_variant("snarm_elpv", variant, VARIANTS)
    if variant.startswith("defects"):
        config = snarm_config("elpv_ad", None, test_normal_fraction=0.25, seed=0)
    else:
        config = snarm_config("synthetic", None, bases=("elpv",), num_train=1000, num_test=400, anomaly_fraction=0.5,
                              seed=0)
    if variant.endswith("_cpu"):
        apply_cpu(config)
        if variant == "synthetic_cpu":
            config.data.source.update(num_train=200, num_test=100)
    return common.finalize(config)
