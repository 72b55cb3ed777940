"""SNARM (Li, Wu et al., 2025, "Self-Navigated Residual Mamba for Universal Industrial Anomaly Detection").

A frozen encoder gives patch features; each test patch is compared with a bank of normal training patches
(inter-residual) and with reference patches of its own image (intra-residual); a multi-head Mamba reads both and
an ensemble of its heads gives the anomaly map. Pipeline of ``SNARM.__call__`` (``ssm_jax.models.residuals`` holds
the residual arithmetic):

1. ``patch_features``: stages ``feature_layers`` of a frozen ResNet, each averaged over ``patch_size`` x
   ``patch_size`` neighbourhoods, resized to the first stage's grid (H/8 for stage 2), channel-pooled to
   ``feature_dim / len(feature_layers)`` and concatenated (PatchCore's aggregation: every stage weighs the same).
2. inter-residual: mean of the ``num_neighbours`` nearest bank rows minus the patch; encoded (``residual_encoding``).
3. navigation: a 1x1 conv ("selector") on the encoded inter-residual; score = sigmoid(selector) + the residual's
   channel mean; the ``round(L * self_ratio)`` lowest-scoring patches are the image's references.
4. intra-residual: nearest reference (itself excluded) minus the patch; encoded the same way.
5. ``len(atrous_rates)`` branches, each: 1x1 conv of [inter, intra] to ``embed_dim``; ``depth`` navigated blocks
   over ``directions`` scan orders (pre-norm RMSNorm with a residual stream, 3x3 conv, then a Mamba mixer run only
   over the non-reference patches, in scan order; references keep the conv output); LayerNorm(dropout(h) + stream);
   then one head per direction: 3x3 conv with dilation = the branch's rate (1x1 when the rate is 1) + BN + ReLU,
   1x1 conv to one logit. Heads = branches x directions (16 by default).
6. ``anomaly_map_from_logits``: each head's logits upsampled (bilinear, corners aligned), sigmoid, mean over heads,
   Gaussian blur (sigma 4); image score = the maximum of the map average-pooled over 16 x 16 windows, stride 2.

Sources. The full paper text could not be retrieved here; only its abstract (inter/intra residuals, small-norm
references, residual-navigated multi-head Mamba, ensemble) and the authors' released inference code
(BeJane/SNARM: ``model/mamba_util.py``, ``model/detectors.py``, ``residual/matching.py``, ``util/predict.py`` and
the README's test command) were read, for facts only. From that code: the selector and score of step 3, self_ratio
0.75, top-3 neighbours, ``concat_abs_square`` encoding, 4 branches with dilation rates 3, 6, 12, 24, 4 scans (raster,
transposed raster and both reversed), mixer only over non-references, d_state 4, d_conv 4, expand 2, embed 128,
depth 2, dropout 0.1, RMSNorm/LayerNorm eps 1e-5, sigmoid-mean ensemble, sigma 4, pooled max score, stride-8 features.

Choices (each a field of ``snarm_model_config``), where this code departs from or goes beyond that:
* ``encoder="wide_resnet50_2"``, ``feature_layers=(2, 3)``, ``patch_size=3``, ``feature_dim=512``: the official code
  uses DINOv2-R ViT-B/14 features (blocks 1-8 in two averaged groups, 512-d); a torchvision ResNet is what this
  project converts, and layers 2+3 with 3x3 aggregation are PatchCore's, whose bank code SNARM's builds on.
* The navigated block's 3x3 conv runs on the map in raster layout for every direction (the official code convolves
  each direction's sequence reshaped to a square, i.e. a transposed/rotated view), so any ``scan_method`` works on
  any H x W; ``scan_method="sweep"`` with ``directions=4`` gives the official four sequences.
* Bank size, its coreset and the training recipe belong to the training family (``ssm_jax.training.residual``).
"""

from __future__ import annotations

import functools
import json
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssm_jax.models.fields import model_fields, with_defaults
from ssm_jax.models.residuals import (ENCODINGS, channel_pool, encode_residual, inter_residuals, intra_residuals,
                                      reference_count, select_references)
from ssm_jax.models.resnet import RESNET_ARCHS, ResNet, normalised_images
from ssm_jax.nn.mamba import MambaMixer
from ssm_jax.nn.resample import gaussian_blur, upsample_bilinear_align_corners
from ssm_jax.ssm import METHODS, scan_orders

_EPS = 1e-5  # mamba_ssm's RMSNorm and torch's LayerNorm / BatchNorm defaults


# The official code's head settings on a PatchCore-style ResNet feature extractor. ``encoder_weights`` is read by the
# training family (a torchvision/timm checkpoint for the frozen encoder), not by the module.
MODEL_DEFAULTS = {
    "encoder": "wide_resnet50_2", "encoder_weights": "", "feature_layers": (2, 3),
    "patch_size": 3, "feature_dim": 512, "num_neighbours": 3, "search_block": 2048,
    "residual_encoding": "abs_square", "self_ratio": 0.75, "embed_dim": 128, "depth": 2, "d_state": 4,
    "d_conv": 4, "expand": 2, "atrous_rates": (3, 6, 12, 24), "scan_method": "sweep", "directions": 4,
    "dropout": 0.1, "scan_impl": "auto", "dtype": "float32",
}


def snarm_model_config(**overrides) -> ml_collections.ConfigDict:
    """``config.model`` for SNARM: ``MODEL_DEFAULTS`` with ``overrides`` (unknown ones refused) and its name."""
    return with_defaults(MODEL_DEFAULTS, overrides, "snarm_model_config", name="snarm")


def build_snarm(config) -> "SNARM":
    """SNARM from ``config.model`` (or a model-level ConfigDict / dict; see ``snarm_model_config``). The bank has one
    zero row until the training family sizes it (``model.clone(bank_size=...)``)."""
    fields = model_fields(config, MODEL_DEFAULTS, "build_snarm")
    fields.pop("encoder_weights")
    for key in ("feature_layers", "atrous_rates"):
        fields[key] = tuple(fields[key])
    return SNARM(**fields)


def navigation_sequences(references: jax.Array, orders: np.ndarray, count: int) -> jax.Array:
    """(B, K, L - count): per image and scan order, the raster indices of the non-reference patches in the order
    the scan visits them (``references`` is a bool (B, L) mask with ``count`` True per row)."""
    is_reference = references[:, orders]  # (B, K, L) in scan order
    steps = jnp.argsort(is_reference, axis=-1, stable=True)[..., : orders.shape[1] - count]
    return jnp.asarray(orders)[jnp.arange(orders.shape[0])[None, :, None], steps]


class NavigatedMambaBlock(nn.Module):
    """Pre-norm block on K copies of the map (B, K, L, E), raster layout: stream += h; h = 3x3 conv(RMSNorm(stream));
    the Mamba mixer then runs over each copy's navigated sequence (B, K, S) and writes its outputs back in place."""

    d_state: int = 4
    d_conv: int = 4
    expand: int = 2
    scan_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden, stream, sequence, height: int, width: int):
        stream = hidden if stream is None else hidden + stream
        b, k, length, e = stream.shape
        h = nn.RMSNorm(epsilon=_EPS, dtype=self.dtype, name="norm")(stream)
        h = nn.Conv(e, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name="conv")(
            h.reshape(b * k, height, width, e)).reshape(b, k, length, e)
        seq = jnp.take_along_axis(h, sequence[..., None], axis=2)
        mixed = MambaMixer(e, self.d_state, self.d_conv, self.expand, scan_impl=self.scan_impl, dtype=self.dtype,
                           name="mixer")(seq.reshape(b * k, -1, e)).reshape(seq.shape)
        h = h.at[jnp.arange(b)[:, None, None], jnp.arange(k)[None, :, None], sequence].set(mixed.astype(h.dtype))
        return h, stream


class NavigatedBranch(nn.Module):
    """One branch: (B, h, w, 2C) residuals -> (B, K, h, w) logits, one head per scan direction."""

    rate: int
    embed_dim: int = 128
    depth: int = 2
    d_state: int = 4
    d_conv: int = 4
    expand: int = 2
    dropout: float = 0.1
    scan_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, sequence, train: bool = False):
        b, height, width, _ = x.shape
        k, e = sequence.shape[1], self.embed_dim
        x = nn.Dense(e, dtype=self.dtype, name="proj")(x).reshape(b, 1, height * width, e)
        hidden, stream = jnp.broadcast_to(x, (b, k, height * width, e)), None
        for i in range(self.depth):
            hidden, stream = NavigatedMambaBlock(self.d_state, self.d_conv, self.expand, self.scan_impl, self.dtype,
                                                 name=f"block{i}")(hidden, stream, sequence, height, width)
        hidden = nn.Dropout(self.dropout)(hidden, deterministic=not train) + stream
        hidden = nn.LayerNorm(epsilon=_EPS, dtype=self.dtype, name="norm")(hidden)
        kernel, pad = (1, 0) if self.rate == 1 else (3, self.rate)
        logits = []
        for d in range(k):
            y = nn.Conv(e, (kernel, kernel), padding=((pad, pad), (pad, pad)), kernel_dilation=self.rate,
                        use_bias=False, dtype=self.dtype,
                        name=f"head{d}_conv")(hidden[:, d].reshape(b, height, width, e))
            y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=_EPS, dtype=self.dtype,
                             name=f"head{d}_bn")(y)
            logits.append(nn.Conv(1, (1, 1), dtype=self.dtype, name=f"head{d}_out")(nn.relu(y))[..., 0])
        return jnp.stack(logits, axis=1).astype(jnp.float32)


class NavigatedResidualDecoder(nn.Module):
    """Everything SNARM trains: (patch features, raw inter-residuals), both (B, h, w, C) -> logits of every head
    (B, heads, h, w), the selector's logits (B, h, w) and the reference mask (B, h, w)."""

    residual_encoding: str = "abs_square"
    self_ratio: float = 0.75
    embed_dim: int = 128
    depth: int = 2
    d_state: int = 4
    d_conv: int = 4
    expand: int = 2
    atrous_rates: Sequence[int] = (3, 6, 12, 24)
    scan_method: str = "sweep"
    directions: int = 4
    dropout: float = 0.1
    scan_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, inter, train: bool = False):
        b, height, width, c = features.shape
        length = height * width
        inter = encode_residual(inter.reshape(b, length, c), self.residual_encoding)
        selector = nn.Dense(1, dtype=self.dtype, name="selector")(inter)[..., 0].astype(jnp.float32)
        score = jax.lax.stop_gradient(jax.nn.sigmoid(selector) + inter.mean(axis=-1))
        count = reference_count(length, self.self_ratio)
        index, references = select_references(score, count)
        intra = encode_residual(intra_residuals(features.reshape(b, length, c), index), self.residual_encoding)
        x = jnp.concatenate([inter, intra], axis=-1).reshape(b, height, width, 2 * c).astype(self.dtype)
        sequence = navigation_sequences(references, scan_orders(self.scan_method, height, width, self.directions),
                                        count)
        logits = [NavigatedBranch(rate, self.embed_dim, self.depth, self.d_state, self.d_conv, self.expand,
                                  self.dropout, self.scan_impl, self.dtype, name=f"branch{i}")(x, sequence, train)
                  for i, rate in enumerate(self.atrous_rates)]
        return {"logits": jnp.concatenate(logits, axis=1), "selector": selector.reshape(b, height, width),
                "references": references.reshape(b, height, width)}


class SNARM(nn.Module):
    """Frozen ResNet -> patch features -> residuals against the ``bank`` collection -> navigated multi-head Mamba.

    ``__call__(images, train, query_groups=None)`` -> ``{"logits" (B, heads, h, w), "selector" (B, h, w),
    "references" (B, h, w) bool}``. The bank lives in the variable collection ``bank``: ``features``
    (bank_size, feature_dim) and ``image_index`` (bank_size,), the training image each row came from;
    ``query_groups`` (B,) excludes, for each image, bank rows with that ``image_index`` (training on images that are
    themselves in the bank); ``num_neighbours`` is capped at the bank's rows. ``patch_features(images)`` ->
    (B, h, w, feature_dim), computed by the frozen encoder.
    Keep ``encoder`` out of the optimiser (``make_optimizer(..., frozen=("encoder",))``).
    """

    encoder: str = "wide_resnet50_2"
    feature_layers: Sequence[int] = (2, 3)
    patch_size: int = 3
    feature_dim: int = 512
    num_neighbours: int = 3
    search_block: int = 2048
    residual_encoding: str = "abs_square"
    self_ratio: float = 0.75
    embed_dim: int = 128
    depth: int = 2
    d_state: int = 4
    d_conv: int = 4
    expand: int = 2
    atrous_rates: Sequence[int] = (3, 6, 12, 24)
    scan_method: str = "sweep"
    directions: int = 4
    dropout: float = 0.1
    scan_impl: str = "auto"
    bank_size: int = 1
    dtype: Any = jnp.float32

    def setup(self):
        self._validate()
        block, layers, width = RESNET_ARCHS[self.encoder]
        self.backbone = ResNet(block, layers, width, tuple(self.feature_layers), self.dtype, name="encoder")
        self.decoder = NavigatedResidualDecoder(
            self.residual_encoding, self.self_ratio, self.embed_dim, self.depth, self.d_state, self.d_conv,
            self.expand, tuple(self.atrous_rates), self.scan_method, self.directions, self.dropout, self.scan_impl,
            self.dtype)
        self.bank = self.variable("bank", "features", jnp.zeros, (self.bank_size, self.feature_dim), jnp.float32)
        self.bank_image = self.variable("bank", "image_index", jnp.full, (self.bank_size,), -1, jnp.int32)

    def _validate(self):
        if self.encoder not in RESNET_ARCHS:
            raise ValueError(f"unknown SNARM encoder {self.encoder!r}; valid: {sorted(RESNET_ARCHS)}")
        if not self.feature_layers or sorted(set(self.feature_layers)) != list(self.feature_layers) \
                or not set(self.feature_layers) <= {1, 2, 3, 4}:
            raise ValueError(f"feature_layers={tuple(self.feature_layers)}: expected increasing ResNet stages in 1..4")
        if self.feature_dim % len(self.feature_layers):
            raise ValueError(f"feature_dim={self.feature_dim} must be divisible by the {len(self.feature_layers)} "
                             f"feature layers (each stage gets an equal share of the channels)")
        if self.residual_encoding not in ENCODINGS:
            raise ValueError(f"residual_encoding={self.residual_encoding!r}; valid: {', '.join(ENCODINGS)}")
        if self.scan_method not in METHODS:
            raise ValueError(f"scan_method={self.scan_method!r}; valid: {', '.join(METHODS)}")
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ValueError(f"patch_size={self.patch_size} must be a positive odd number")
        if self.depth < 1 or self.embed_dim < 1 or self.num_neighbours < 1:
            raise ValueError(f"depth={self.depth}, embed_dim={self.embed_dim} and num_neighbours="
                             f"{self.num_neighbours} must all be at least 1")
        if not self.atrous_rates or min(self.atrous_rates) < 1:
            raise ValueError(f"atrous_rates={tuple(self.atrous_rates)}: expected one positive dilation per branch")

    def patch_features(self, images):
        """(B, H, W, 3) ImageNet-normalised -> (B, H / 2^(first layer + 1), ..., feature_dim), no gradient."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"SNARM: images have shape {images.shape}, expected (batch, height, width, 3)")
        stages = self.backbone(images, train=False)
        b, height, width, _ = stages[0].shape
        share = self.feature_dim // len(stages)
        out = []
        for f in stages:
            f = jax.lax.stop_gradient(f).astype(jnp.float32)
            if self.patch_size > 1:
                p = self.patch_size // 2
                f = nn.avg_pool(f, (self.patch_size,) * 2, padding=((p, p), (p, p)), count_include_pad=False)
            if f.shape[1:3] != (height, width):
                f = jax.image.resize(f, (b, height, width, f.shape[-1]), "linear")
            out.append(channel_pool(f, share))
        return jnp.concatenate(out, axis=-1)

    def __call__(self, images, train: bool = False, query_groups=None):
        features = self.patch_features(images)
        b, height, width, c = features.shape
        if query_groups is not None and jnp.shape(query_groups) != (b,):
            raise ValueError(f"SNARM: query_groups has shape {jnp.shape(query_groups)}, expected ({b},): one bank "
                             f"image_index per image, whose rows that image's search leaves out")
        groups = None if query_groups is None else jnp.repeat(jnp.asarray(query_groups, jnp.int32), height * width)
        rows = self.bank.value.shape[0]  # the bank passed in, whatever ``bank_size`` (its shape at init) says
        inter = inter_residuals(features.reshape(-1, c), self.bank.value, min(self.num_neighbours, rows),
                                self.search_block, groups, None if groups is None else self.bank_image.value)
        return self.decoder(features, inter.reshape(features.shape), train)


def anomaly_map_from_logits(logits, out_size: tuple[int, int], sigma: float = 4.0, score_pool: int = 16,
                            score_stride: int = 2):
    """(maps (B, H, W), scores (B,)) from head logits (B, heads, h, w): each head upsampled (bilinear, corners
    aligned) to ``out_size``, sigmoid, mean over heads, Gaussian blur of ``sigma`` (0: none); score = max of the map
    average-pooled over ``score_pool`` x ``score_pool`` windows with ``score_stride`` (pool 1: the map's max)."""
    if logits.ndim != 4:
        raise ValueError(f"expected head logits (batch, heads, h, w), got {logits.shape}")
    up = upsample_bilinear_align_corners(jnp.moveaxis(logits.astype(jnp.float32), 1, -1), out_size)
    maps = gaussian_blur(jnp.mean(jax.nn.sigmoid(up), axis=-1), sigma)
    window = min(score_pool, *maps.shape[1:])
    pooled = jax.lax.reduce_window(maps, 0.0, jax.lax.add, (1, window, window), (1, score_stride, score_stride),
                                   "VALID") / (window * window)
    return maps, pooled.reshape(maps.shape[0], -1).max(axis=-1)


@functools.lru_cache(maxsize=8)
def _jitted_maps(config_json: str, bank_size: int, out_size: tuple[int, int], sigma: float):
    model = build_snarm(ml_collections.ConfigDict(json.loads(config_json))).clone(bank_size=bank_size)

    def run(variables, images):
        return anomaly_map_from_logits(model.apply(variables, images)["logits"], out_size, sigma)

    return jax.jit(run)


def anomaly_maps(config, variables, images, sigma: float = 4.0):
    """(maps (B, H, W), scores (B,)) for ImageNet-normalised NHWC ``images`` with a SNARM ``config`` (the model
    section, e.g. a run's ``config.model`` or ``snarm_model_config(...)``) and its ``variables`` (params,
    batch_stats and the filled ``bank``, e.g. a trained state's), as MambaAD's ``anomaly_maps`` takes them."""
    images = normalised_images(images, "anomaly_maps")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"anomaly_maps: images have shape {images.shape}, expected (batch, height, width, 3)")
    if isinstance(config, nn.Module) or "model" in config:
        raise ValueError("anomaly_maps: pass the model section of a config (config.model, or snarm_model_config()), "
                         f"not {'a module' if isinstance(config, nn.Module) else 'the whole config'}")
    if "bank" not in variables:
        raise ValueError("anomaly_maps: variables have no 'bank' collection; expected a trained SNARM's variables "
                         "(params, batch_stats and the bank of normal patch features)")
    if np.all(np.asarray(variables["bank"]["image_index"]) < 0):
        raise ValueError("anomaly_maps: the bank holds no normal patches (only the zero row that init leaves); "
                         "expected a trained SNARM's variables, whose bank train.py fills from the training images")
    bank_size = int(np.shape(variables["bank"]["features"])[0])
    return _jitted_maps(ml_collections.ConfigDict(config).to_json(), bank_size, tuple(images.shape[1:3]),
                        float(sigma))(variables, images)
