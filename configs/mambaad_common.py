"""MambaAD configs: the paper's recipe (He et al., NeurIPS 2024, official code on ADer), shared by every dataset.

Model: frozen ResNet34 encoder (ImageNet weights: ``--config.model.encoder_weights=resnet34.pth``; the official
configs load timm's ``resnet34`` weights, ``resnet34-43635321.pth``), MFF bottleneck, Mamba decoder of depths
3-4-6-3 with Hilbert scans in 8 directions, drop path 0.2.
Data: 256 px, ImageNet normalisation, no augmentation; multi-class (one model for all categories).
Training (ADer's MambaAD configs and trainer): loss 5 x feature MSE per scale; AdamW, lr 0.005 x batch / 16, betas
(0.9, 0.999), weight decay 1e-4 on every tensor of two or more axes but biases (A_logs included), gradients clipped
to global norm 5, no warm-up, lr x0.1 at 80% of the steps; batch 16. Evaluation: anomaly map Gaussian sigma 4,
score = map max. The official configs train 1000 epochs on MVTec AD, VisA and Real-IAD; ours default to ADer's
100-epoch benchmark length.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from configs import common
from ssm_jax.models.mambaad import mambaad_model_config

BASE_LR, BASE_BATCH = 0.005, 16


def all_categories():
    """``data.source.categories`` = None (every category: multi-class), which the command line can still set to a
    name (``--config.data.source.categories=bottle``) or a tuple (``"('bottle', 'cable')"``)."""
    return config_dict.placeholder(object)


def set_batch_size(config: ml_collections.ConfigDict, batch_size: int) -> None:
    """Train and eval batch, with the paper's linear scaling lr = 0.005 x batch / 16."""
    config.train.batch_size = config.train.eval_batch_size = batch_size
    config.optim.lr = BASE_LR * batch_size / BASE_BATCH


def mambaad_config(dataset: str, root: str | None, *, epochs: int, image_size: int = 256,
                   **source_kwargs) -> ml_collections.ConfigDict:
    """A full MambaAD config at the paper's settings; ``epochs`` is the dataset's (see each config file)."""
    config = ml_collections.ConfigDict()
    config.task = "anomaly"
    config.seed = 0
    config.model = mambaad_model_config()
    config.loss = ml_collections.ConfigDict({"weight": 5.0})
    config.data = common.data_config(dataset, root, image_size, **source_kwargs)
    config.data.flips = ()
    config.optim = common.optim_config(weight_decay=1e-4, b1=0.9, b2=0.999, warmup_fraction=0.0, decay="step",
                                       step_fraction=0.8, step_factor=0.1, grad_clip=5.0, no_decay=("bias",))
    config.train = common.train_config(epochs=epochs)
    set_batch_size(config, BASE_BATCH)
    # sigma: the anomaly map's Gaussian blur; num_overlays: test images per category in eval/overlays/;
    # flag_threshold > 0: an image scoring at least this is flagged (a "flagged" column in scores.csv and
    # predict_<folder>.csv, its recall and false alarms on the test split); pick it from the cuts the evaluation
    # prints (at most 1, 5, 10 % of normal images flagged), on images the model did not train on; 0: off.
    config.eval = ml_collections.ConfigDict({"sigma": 4.0, "num_overlays": 16, "flag_threshold": 0.0})
    return config


def apply_cpu(config: ml_collections.ConfigDict) -> None:
    """A CPU smoke run: 64 px, a shallow narrow-bottleneck decoder (depths 2-2-2-2) whose scans keep one state per
    channel (d_state 1, ssm_ratio 1, as VMamba v2 and MemoryMamba's ``:cpu``), batch 8, 2 epochs (ELPV's
    ``:defects_cpu`` and the folder's ``:cpu``).

    ``decoder_dims[1:]`` stay the encoder's stage widths (the decoder reconstructs them). On a CPU the step is mostly
    the sequential scans: d_state 1 and ssm_ratio 1 train ``mambaad_elpv.py:defects_cpu`` at 16 images/s where the
    paper's 16 and 2 train at 4 (40 steps each on this project's 2-core CPU, 2026-12-07)."""
    config.data.image_size = 64
    config.model.decoder_dims = (256,) + tuple(config.model.decoder_dims[1:])
    config.model.decoder_depths = (2, 2, 2, 2)
    config.model.d_state = 1
    config.model.ssm_ratio = 1.0
    config.model.drop_path = 0.1
    config.train.epochs = 2
    config.train.checkpoint_every = 100
    set_batch_size(config, 8)
