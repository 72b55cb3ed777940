"""SNARM configs: one recipe shared by every dataset (the model's defaults are in ``ssm_jax.models.snarm``).

From the authors' released inference code and its README test command (see ``ssm_jax/models/snarm.py`` for what
was and was not available): top-3 neighbours, self_ratio 0.75, 4 branches x 4 scans, Mamba depth 2, AdamW (its
optimizer factory) at lr 1e-3 (the experiment's name), checkpoints evaluated up to 40,000 iterations, a bank of at
most 1,000,000 patches thinned by a greedy coreset (100,000 rows for multi-class MVTec AD: ``coreset_ratio`` 0.1),
maps blurred with sigma 4 and scored by the max of 16 x 16 average pooling (stride 2).
Choices (the paper's training recipe was not available): 256 px and a frozen Wide-ResNet50 (layers 2+3, as
PatchCore) instead of 392 px DINOv2, with the released crop kept for MVTec AD, VisA and MVTec 3D-AD (resized to 256
/ 0.875 = 293, the centre 256 kept, images and masks, train and test: ``data.center_crop`` 0.875; the outer 23% of
each image is not scored; ELPV's cells are scored whole); batch 16; weight decay 1e-4; cosine decay to lr / 10
without warm-up (the released utilities hold a warm-up + cosine scheduler; its settings are unknown); no image
augmentation; focal loss (gamma 2, alpha 0.25, RetinaNet's pairing) on every head, the selector's cross-entropy with
weight 1; synthetic defects (another training image's content pasted through smooth-noise masks,
``ssm_jax/data/pasted_defects.py``, not the released offline generator) in half of each batch, 0.5-10% of the image,
opacity 0.5-1; each training image's own patches left out of its bank search.
Pass ImageNet weights with ``--config.model.encoder_weights=wide_resnet50_2.pth`` (a torchvision state_dict).
"""

from __future__ import annotations

import ml_collections

from configs import common
from ssm_jax.models.snarm import snarm_model_config

# The official command's --num-steps; configs train to this many steps (train.epochs is only an upper bound).
STEPS = 40_000
# The released preprocessing of MVTec AD, VisA and MVTec 3D-AD: resized to 448, the centre 392 kept.
RELEASED_CROP = 392 / 448


def snarm_config(dataset: str, root: str | None, *, image_size: int = 256,
                 **source_kwargs) -> ml_collections.ConfigDict:
    """A full SNARM config; ``source_kwargs`` are the dataset loader's options."""
    config = ml_collections.ConfigDict()
    config.task = "residual"
    config.seed = 0
    config.model = snarm_model_config()
    # coreset_ratio: share of the (at most max_patches) training patches the bank keeps; projection_dim: the
    # random projection the greedy k-center selection measures distances in (the bank keeps full features).
    config.bank = ml_collections.ConfigDict({"coreset_ratio": 0.1, "max_patches": 1_000_000, "projection_dim": 128})
    config.loss = ml_collections.ConfigDict({
        "focal_gamma": 2.0, "focal_alpha": 0.25, "selector_weight": 1.0, "exclude_own_image": True,
        "defects": {"fraction": 0.5, "area": (0.005, 0.1), "opacity": (0.5, 1.0)},
    })
    config.data = common.data_config(dataset, root, image_size, **source_kwargs)
    if dataset in ("mvtec", "visa", "mvtec3d"):
        config.data.center_crop = RELEASED_CROP
    config.data.flips = ()
    config.optim = common.optim_config(lr=1e-3, weight_decay=1e-4, warmup_fraction=0.0, decay="cosine")
    config.optim.end_lr = config.optim.get_ref("lr") * 0.1  # follows --config.optim.lr unless set itself
    config.train = common.train_config(epochs=1000, max_steps=STEPS, batch_size=16, eval_batch_size=16,
                                       checkpoint_every=1000)
    # sigma: the map's Gaussian blur; score_pool / score_stride: the average pooling whose maximum is the image
    # score; num_overlays: test images per category in eval/overlays/; flag_threshold: as configs/mambaad_common.py.
    config.eval = ml_collections.ConfigDict({"sigma": 4.0, "score_pool": 16, "score_stride": 2, "num_overlays": 16,
                                             "flag_threshold": 0.0})
    return config


def apply_cpu(config: ml_collections.ConfigDict) -> None:
    """A CPU smoke run: 64 px, ResNet18 features (64 channels), one navigated block per branch, two branches
    (dilation 1 and 2: the feature map is 8 x 8) with 4 scans each, batch 8, 300 steps (ELPV's ``:defects_cpu`` and
    the folder's ``:cpu``)."""
    config.data.image_size = 64
    config.model.update(encoder="resnet18", feature_dim=64, embed_dim=32, depth=1, atrous_rates=(1, 2))
    config.train.update(max_steps=300, batch_size=8, eval_batch_size=32, checkpoint_every=100, log_every=10)
