"""MemoryMamba configs shared by every dataset: the model section and the loss of paper 000 (eq. 25).

The paper gives neither the loss weights (lambda_c, lambda_f), the contrastive margin (delta of eq. 23), the memory
sizes used for its tables, the image size nor any augmentation; the values here are this project's (weights 0.1,
margin 0.5, InfoNCE temperature 0.1, memories of 32 and 128 slots, 224 px, horizontal flips)."""

from __future__ import annotations

import ml_collections

from configs import common
from ssm_jax.models.memorymamba import memorymamba_model_config, memorymamba_presets


def memorymamba_config(dataset: str, num_classes: int, root: str | None, image_size: int = 224,
                       **source_kwargs) -> ml_collections.ConfigDict:
    """A full MemoryMamba classification config: the paper's optimiser settings and batch 64, the tiny model at 224
    px (VMamba-T's depths and widths, this project's choice of size)."""
    config = ml_collections.ConfigDict()
    config.task = "classification"
    config.seed = 0
    config.model = memorymamba_model_config(num_classes)
    config.model.name = "memorymamba"
    del config.model["preset"]  # the size is the variant's (apply_size); depths and dims are set, so overridable
    apply_size(config, "tiny")
    # label_smoothing (0: off), class_weights ("none", "balanced" = inverse class frequency of the training
    # split, or explicit "w0,w1,...") and ordinal (0: off; s > 0: soft labels exp(-s (k - y)^2) for ordered
    # classes) shape the cross-entropy term only. mixup_alpha / cutmix_alpha > 0 blend each training image with
    # another and mix their labels (ssm_jax/training/mixing.py; 0: off, not in the paper). nce_similarity is eq. 24's
    # sim(Z, M): "cos" (this project's default, bounded, so the temperature sets the logits' scale) or "dot" (the
    # paper's example).
    config.loss = ml_collections.ConfigDict({"lambda_c": 0.1, "lambda_f": 0.1, "margin": 0.5, "temperature": 0.1,
                                             "nce_similarity": "cos", "label_smoothing": 0.0, "class_weights": "none",
                                             "ordinal": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0})
    config.data = common.data_config(dataset, root, image_size, **source_kwargs)
    config.optim = common.optim_config()
    config.train = common.train_config()
    # tta: test-time augmentation at evaluation, probabilities averaged over "flips" (4 views) or "d4" (8: the 90-degree
    # rotations and mirrors; square images) of each image; "none" by default. Results go to <workdir>/eval_tta_<mode>.
    # binary_from > 0 also reports the two-group task of ordered classes, classes binary_from.. as positive (ELPV: 2,
    # defect probability >= 0.5 is defective), beside the per-class metrics; 0: off. flag_threshold > 0 (with
    # binary_from) flags an image when that group's summed probability reaches it: a "flagged" column in
    # predictions.csv and predict_<folder>.csv, and its recall and false alarms on the test split (pick it from the
    # cuts the evaluation of validation images prints); 0: off.
    config.eval = ml_collections.ConfigDict({"tta": "none", "binary_from": 0, "flag_threshold": 0.0})
    return config


def apply_size(config: ml_collections.ConfigDict, size: str) -> None:
    """Model sizes tiny / small / base: VMamba v0's depths and widths (the paper gives MemoryMamba's size nowhere;
    its tables size only the VMamba baselines)."""
    if size not in memorymamba_presets:
        raise ValueError(f"unknown model size {size!r}; valid: {', '.join(memorymamba_presets)}")
    config.model.depths, config.model.dims = (memorymamba_presets[size][key] for key in ("depths", "dims"))


def apply_cpu(config: ml_collections.ConfigDict) -> None:
    """A model and schedule for a CPU (ELPV's ``:cpu``, 5-10 minutes on 2 cores): 64 px, depths 1-1-2, widths
    24-48-96, SS2D blocks with d_state 1 and expand 1 (3.8x faster there at the same accuracy: memorymamba_elpv's
    docstring), memories of 16 and 32 slots, lr 2e-3, 10 epochs, batch 32."""
    config.data.image_size = 64
    config.model.depths, config.model.dims = (1, 1, 2), (24, 48, 96)
    config.model.d_state, config.model.expand = 1, 1
    config.model.coarse_size, config.model.fine_size = 16, 32
    config.optim.lr = 2e-3
    config.train.epochs = 10
    config.train.batch_size = config.train.eval_batch_size = 32
    config.train.checkpoint_every = 100
