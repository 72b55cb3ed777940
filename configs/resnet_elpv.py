r"""A ResNet classifier on ELPV with MemoryMamba's recipe: the convolutional baseline on the same split and evaluation.

Variants (``--config=configs/resnet_elpv.py:<variant>``) are ``memorymamba_elpv``'s classifier variants with the
network swapped and nothing else changed (data, augmentation, optimiser, schedule, label smoothing, evaluation):
  gpu (default)  ResNet-34 at 224 px, batch 64, 40 epochs: what a CNN from scratch gets where MemoryMamba-tiny
                 gets its figures (README, Results), and the published CNNs' architecture family.
  cpu            ResNet-18 at 64 px, 10 epochs: ``memorymamba_elpv:cpu``'s setting. Slow on a CPU: 2.2-2.4 s a step of
                 32 images on this project's 2-core machine (2026-12-01, the first 33 of 610 steps; the progress
                 bar's estimate for the run was 22-23 minutes), where MemoryMamba's ``:cpu`` step takes 0.28 s.

Measured (one H200, 2026-12-01, seeds 0-2, docs/elpv_experiments.md, "A ResNet-34 from scratch"): 72.8 +- 0.1 % test
accuracy and 48.8 +- 3.5 % macro F1 from scratch, where MemoryMamba-tiny gets 72.6 +- 1.0 % and 48.7 +- 1.9 %; lr 1e-3
gives 72.0 %. At 160 epochs (``--config.train.epochs=160``, 2026-12-02): 74.5 +- 1.0 % and 54.8 +- 1.7 %, where
MemoryMamba-tiny (seed 0) gets 73.6 %; the longer schedule is not the default, as the recipe is shared with MemoryMamba.
With sharpness-aware minimisation on that schedule (``--config.optim.sam_rho=0.05``, 2026-12-04): 74.3 +- 0.7 %.
These runs predate the recipe's class balance (``data.class_balance`` 0.25 since 2026-12-04): add
``--config.data.class_balance=0`` to repeat them. With it, three seeds with ``--config.train.deterministic=True``
(one H200, 2026-12-04, session 45): 72.4 +- 1.2 % and 51.9 +- 0.8 % macro F1, against 73.6 +- 0.4 % and 49.5 +- 1.2 %
without it; the p = 2/3 class is found (9.9 against 1.2 % recall) and the two-group reading is unchanged
(docs/elpv_experiments.md, "The ResNet-34 baseline with and without the class balance").

From scratch by default. With a torchvision ImageNet checkpoint of the same architecture the backbone starts
pretrained (the head starts fresh), as the published 88.42 % (VGG-19) and 90.1 % (ResNet-152) did:

  python train.py --config=configs/resnet_elpv.py --workdir=runs/resnet34_elpv_s$S --config.seed=$S
  python train.py --config=configs/resnet_elpv.py --workdir=runs/resnet34_in1k_elpv \
      --config.model.encoder_weights=resnet34.pth
  python eval.py --config=configs/resnet_elpv.py --workdir=runs/resnet34_elpv_s$S --config.eval.tta=d4

where ``resnet34.pth`` is ``torch.save(torchvision.models.resnet34(weights="DEFAULT").state_dict(), "resnet34.pth")``
made on a machine that can download it (none ships offline here). ``--config.model.arch`` takes resnet18, resnet34,
resnet50 or wide_resnet50_2. The memory losses of the recipe have nothing to act on here and add 0.
"""

from configs import common, memorymamba_elpv
from ssm_jax.models.resnet_classifier import resnet_model_config

ARCHS = {"gpu": "resnet34", "cpu": "resnet18"}


def get_config(variant: str = "gpu"):
    common.check_variant("resnet_elpv", variant, ARCHS)
    config = memorymamba_elpv.get_config(variant)
    with config.unlocked():
        config.model = resnet_model_config(config.model.num_classes, arch=ARCHS[variant])
        config.model.name = "resnet"
    return common.finalize(config)
