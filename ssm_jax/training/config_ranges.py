"""The ranges of a config's numeric fields, checked before anything is built.

A size of 0 or a fraction given as a percent is otherwise accepted and fails late (a state-less SSM trains until its
first checkpoint cannot be written; ``score_pool=0`` fails after training) or never (``warmup_fraction=5`` just
trains with another schedule). Fields a config does not have are skipped; fields with their own checks where they
are used (label smoothing, class balance, layer decay, ...) are not repeated here.
"""

from __future__ import annotations

import math

# kind -> (test, what the message says is expected)
KINDS = {
    "count": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "positive": (lambda v: v > 0, "a value > 0"),
    "nonnegative": (lambda v: v >= 0, "a value >= 0"),
    "fraction": (lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
    "probability": (lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    "bits": (lambda v: isinstance(v, int) and (v == 0 or 8 <= v <= 32), "0 (the file type's range) or 8..32"),
    "limit": (lambda v: isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v >= 1),
              "-1 (no limit) or an integer >= 1"),
}

RANGES = {
    "count": (
        "train.epochs", "train.batch_size", "train.eval_batch_size", "train.log_every", "train.checkpoint_every",
        "train.max_to_keep",  # 0 would delete every checkpoint the run writes, the last included
        "data.image_size", "data.source.num_train", "data.source.num_test",
        "model.d_state", "model.patch_size", "model.coarse_size", "model.fine_size", "model.d_conv", "model.depth",
        "model.depths", "model.dims", "model.decoder_dims", "model.embed_dim", "model.feature_dim",
        "model.atrous_rates", "model.local_kernels", "model.num_neighbours", "model.search_block",
        "bank.max_patches", "bank.projection_dim", "loss.mask_patch", "eval.score_pool", "eval.score_stride",
    ),
    "positive": ("model.expand", "model.ssm_ratio", "optim.lr", "optim.eps", "loss.temperature"),
    "nonnegative": (
        "optim.end_lr", "optim.weight_decay", "optim.grad_clip", "optim.step_factor", "loss.lambda_c", "loss.lambda_f",
        "loss.weight", "loss.selector_weight", "loss.margin", "loss.focal_gamma", "eval.sigma", "eval.num_overlays",
        "eval.flag_threshold", "data.num_workers",
    ),
    "fraction": ("optim.warmup_fraction", "optim.step_fraction", "data.source.anomaly_fraction"),
    "probability": ("optim.b1", "optim.b2", "model.drop_path", "model.dropout"),
    "bits": ("data.bit_depth",),
    "limit": ("train.max_steps",),  # 0 trained to the end of the schedule, as -1 does, where it read as no steps
}


def _lookup(config, path: str):
    """The field at a dotted path, or None where the config (or a section of it) does not have it."""
    node = config
    for key in path.split("."):
        if node is None or not hasattr(node, "get"):
            return None
        node = node.get(key)
    return node


def check_ranges(config) -> None:
    """Raises one ValueError naming every field of ``config`` outside its range (``RANGES``) and what was expected."""
    bad = []
    for kind, paths in RANGES.items():
        test, expected = KINDS[kind]
        for path in paths:
            value = _lookup(config, path)
            values = value if isinstance(value, (tuple, list)) else (value,)
            if value is None or all(isinstance(v, str) for v in values):  # absent, or a name such as dt_rank="auto"
                continue
            if not all(isinstance(v, (int, float)) and not math.isnan(v) and test(v) for v in values):
                each = " each" if isinstance(value, (tuple, list)) else ""
                bad.append(f"config.{path}={value!r}: expected{each} {expected}")
    if bad:
        raise ValueError("; ".join(bad))
