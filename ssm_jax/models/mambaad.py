"""MambaAD (He et al., NeurIPS 2024): multi-class unsupervised anomaly detection by feature reconstruction.

A frozen ImageNet ResNet encoder gives features at H/4, H/8, H/16; ``MFFBottleneck`` fuses them into one H/32 map;
a Mamba decoder of Locality-Enhanced State Space (LSS) modules reconstructs the three encoder scales. Training
minimises the encoder-decoder feature MSE on normal images; at test time the anomaly map is the per-scale
``1 - cos`` between encoder and decoder features, upsampled and blurred, and the image score is its maximum.

The structure, names and numerics follow the official code (lewandofskee/MambaAD on ADer) so that
``ssm_jax.convert.from_torch("mambaad", ...)`` loads its checkpoints and gives the same anomaly maps:

* Bottleneck ``MFF_OCE``: fpn0 = ReLU(BN(conv3x3/2(e1))); fpn1 = ReLU(BN(conv1x1(e2))) + fpn0;
  v = ReLU(BN(conv3x3/2(fpn1))) + ReLU(BN(conv1x1(e3))); v = ReLU(BN(conv1x1(v))); then 3 ResNet bottleneck
  blocks, the first with stride 2, giving ``decoder_dims[0]`` channels at H/32.
* Decoder ``MambaUPNet``: stages of ``decoder_dims`` / ``decoder_depths``; every stage but the first starts with
  ``PatchExpand`` (Linear 2C -> 4C, pixel shuffle x2, LayerNorm). A stage of depth d holds d/3 LSS modules of
  3 HSS blocks when 3 divides d, else d/2 modules of 2 (other depths are an error; the official code crashes).
* LSS module: cascaded HSS blocks ``x + DropPath(SS2D(LN(x)))`` in parallel with two conv branches
  [1x1 conv + IN + SiLU -> depthwise k x k + IN + SiLU -> 1x1 conv + IN + SiLU] for k in ``local_kernels`` (5, 7;
  IN = instance norm without affine parameters); concat (SSM, k=5, k=7) -> 1x1 conv -> + input. The released
  Real-IAD checkpoint stores its 7x7 branch under other names (ADer's layout; ``ssm_jax.convert.mambaad``).
* SS2D scans in ``directions`` (8) orders of ``scan_method`` ("hilbert"): the map, its transpose, rot90 and
  rot90 transposed, each forward then reversed (``ssm_jax.ssm.scan_orders``; on power-of-two squares the Hilbert
  curve equals the official ``numpy-hilbert-curve`` order).
* Stochastic depth: rates linear from 0 to ``drop_path`` over all blocks, reversed (largest at the first stage);
  module j of a stage uses the stage's j-th rate, as the official code does.
* LayerNorms use epsilon 1e-5 (torch's default, which the official decoder uses throughout).
* Anomaly map (ADer's ``cal_anomaly_map`` with ``amap_mode='add'``, ``gaussian_sigma=4``): the per-scale maps are
  summed and divided by ``n_scales * sum(weights)`` = 9 -- one third of their mean, kept so that maps equal the
  official ones; the scale does not change any metric.
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
from ssm_jax.models.resnet import RESNET_ARCHS, Block, ResNet, conv_init, normalised_images, stage_channels
from ssm_jax.nn.drop import DropPath
from ssm_jax.nn.resample import gaussian_blur, upsample_bilinear_align_corners
from ssm_jax.nn.ss2d import SS2D

_LN_EPS = 1e-5
ENCODER_STAGES = (1, 2, 3)  # the frozen ResNet's stages whose features the decoder reconstructs
_trunc_normal_02 = nn.initializers.truncated_normal(0.02)


def depthwise_init(kernel: int):
    """The official LSS init of a depthwise k x k conv: normal with std sqrt(2 / fan_out), torch's fan_out being
    k * k * out_channels / groups = k * k (flax's ``fan_out`` would count every channel: 22x smaller at 512)."""
    return nn.initializers.normal(float(np.sqrt(2.0 / (kernel * kernel))))


# The paper's model: ResNet34 encoder, decoder depths 3-4-6-3, Hilbert scans in 8 directions. ``encoder_weights`` is
# read by the training families (a torchvision/timm checkpoint for the frozen encoder), not by the module.
MODEL_DEFAULTS = {
    "encoder": "resnet34", "encoder_weights": "",
    "decoder_dims": (512, 256, 128, 64), "decoder_depths": (3, 4, 6, 3), "d_state": 16, "ssm_ratio": 2.0,
    "drop_path": 0.2, "scan_method": "hilbert", "directions": 8, "scan_impl": "auto", "local_kernels": (5, 7),
    "fused_directions": True, "dtype": "float32",
}


def mambaad_model_config(**overrides) -> ml_collections.ConfigDict:
    """``config.model`` for MambaAD: ``MODEL_DEFAULTS`` with ``overrides`` (unknown ones refused) and its name."""
    return with_defaults(MODEL_DEFAULTS, overrides, "mambaad_model_config", name="mambaad")


def build_mambaad(config) -> "MambaAD":
    """MambaAD from ``config.model`` (or a model-level ConfigDict / dict; see ``mambaad_model_config``)."""
    fields = model_fields(config, MODEL_DEFAULTS, "build_mambaad")
    return MambaAD(encoder=fields["encoder"], decoder_dims=tuple(fields["decoder_dims"]),
                   decoder_depths=tuple(fields["decoder_depths"]), d_state=fields["d_state"],
                   ssm_ratio=fields["ssm_ratio"], drop_path=fields["drop_path"], scan_method=fields["scan_method"],
                   directions=fields["directions"], scan_impl=fields["scan_impl"],
                   local_kernels=tuple(fields["local_kernels"]), dtype=fields["dtype"],
                   fused_directions=bool(fields["fused_directions"]))


def _conv_bn_relu(x, features, kernel, stride, use_bias, name, train, dtype):
    pad = (kernel - 1) // 2
    x = nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                use_bias=use_bias, kernel_init=conv_init, dtype=dtype, name=f"conv{name}")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=f"bn{name}")(x)
    return nn.relu(x)


class MFFBottleneck(nn.Module):
    """Multi-scale feature fusion + one-class embedding (``MFF_OCE``): encoder scales -> one (B, H/32, out_dim) map."""

    out_dim: int = 512
    num_blocks: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], train: bool = False):
        e1, e2, e3 = features
        c2, c3 = e2.shape[-1], e3.shape[-1]
        kw = dict(train=train, dtype=self.dtype)
        fpn0 = _conv_bn_relu(e1, c2, 3, 2, False, "1", **kw)
        fpn1 = _conv_bn_relu(e2, c2, 1, 1, True, "21", **kw) + fpn0
        v = _conv_bn_relu(fpn1, c3, 3, 2, False, "2", **kw) + _conv_bn_relu(e3, c3, 1, 1, True, "31", **kw)
        v = _conv_bn_relu(v, c3, 1, 1, True, "f", **kw)
        for j in range(self.num_blocks):
            v = Block("bottleneck", self.out_dim // 4, stride=2 if j == 0 else 1, dtype=self.dtype,
                      name=f"bn_layer_{j}")(v, train)
        return v


class InstanceNorm(nn.Module):
    """torch ``InstanceNorm2d`` defaults: per sample and channel over H, W; eps 1e-5; no affine parameters."""

    @nn.compact
    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        mean = x32.mean(axis=(1, 2), keepdims=True)
        var = jnp.square(x32 - mean).mean(axis=(1, 2), keepdims=True)
        return ((x32 - mean) * jax.lax.rsqrt(var + 1e-5)).astype(x.dtype)


class ConvBranch(nn.Module):
    """1x1 conv -> depthwise k x k -> 1x1 conv, each followed by instance norm and SiLU (LSS's local branch)."""

    kernel: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c, k, p = x.shape[-1], self.kernel, self.kernel // 2
        conv = functools.partial(nn.Conv, kernel_init=conv_init, dtype=self.dtype)
        x = nn.silu(InstanceNorm()(conv(c, (1, 1), name="conv_in")(x)))
        x = conv(c, (k, k), padding=((p, p), (p, p)), feature_group_count=c, use_bias=False,
                 kernel_init=depthwise_init(k), name="conv_dw")(x)
        x = nn.silu(InstanceNorm()(x))
        return nn.silu(InstanceNorm()(conv(c, (1, 1), name="conv_out")(x)))


class HSSBlock(nn.Module):
    """Hybrid State Space block: ``x + DropPath(SS2D(LayerNorm(x)))`` with Hilbert scans in 8 directions."""

    d_state: int
    ssm_ratio: float
    drop_path: float
    scan_method: str
    directions: int
    scan_impl: str
    dtype: Any = jnp.float32
    fused_directions: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="ln_1")(x)
        y = SS2D(x.shape[-1], d_state=self.d_state, expand=self.ssm_ratio, scan_method=self.scan_method,
                 directions=self.directions, scan_impl=self.scan_impl, dense_init=_trunc_normal_02,
                 conv_init=depthwise_init(3), dtype=self.dtype, fused_directions=self.fused_directions,
                 name="self_attention")(y)
        return x + DropPath(self.drop_path, name="drop_path")(y, deterministic=not train)


class LSSModule(nn.Module):
    """Locality-Enhanced State Space module: cascaded HSS blocks beside k x k conv branches, fused by a 1x1 conv.

    The fused input is the concatenation (SSM, branch k for k in ``local_kernels``).
    """

    depth: int
    d_state: int
    ssm_ratio: float
    drop_path: float
    scan_method: str
    directions: int
    scan_impl: str
    local_kernels: Sequence[int] = (5, 7)
    dtype: Any = jnp.float32
    fused_directions: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        ssm = x
        for i in range(self.depth):
            ssm = HSSBlock(self.d_state, self.ssm_ratio, self.drop_path, self.scan_method, self.directions,
                           self.scan_impl, self.dtype, self.fused_directions, name=f"smm_blocks_{i}")(ssm, train)
        local = [ConvBranch(k, self.dtype, name=f"branch{k}")(x) for k in self.local_kernels]
        fused = nn.Conv(x.shape[-1], (1, 1), kernel_init=conv_init, dtype=self.dtype, name="finalconv11")(
            jnp.concatenate([ssm, *local], axis=-1))
        return fused + x


class PatchExpand(nn.Module):
    """(B, H, W, 2C) -> (B, 2H, 2W, C): Linear 2C -> 4C, pixel shuffle x2 (channel = (p1, p2, c)), LayerNorm."""

    dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, _ = x.shape
        x = nn.Dense(4 * self.dim, use_bias=False, kernel_init=_trunc_normal_02, dtype=self.dtype, name="expand")(x)
        x = x.reshape(b, h, w, 2, 2, self.dim).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, self.dim)
        return nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="norm")(x)


def lss_layout(depth: int) -> tuple[int, int]:
    """(number of LSS modules, HSS blocks per module) for a stage of ``depth`` HSS blocks."""
    for per_module in (3, 2):
        if depth % per_module == 0:
            return depth // per_module, per_module
    raise ValueError(f"decoder depth {depth} is not divisible by 3 or 2; MambaAD groups HSS blocks in LSS modules "
                     f"of 3 (or of 2), e.g. depths (3, 4, 6, 3)")


def drop_path_rates(depths: Sequence[int], drop_path: float) -> list[list[float]]:
    """Per stage, per LSS module: the official rates (linear 0..drop_path over all blocks, reversed, the stage's
    first entries used by its modules)."""
    rates = np.linspace(0.0, drop_path, sum(depths))[::-1]
    starts = np.cumsum([0, *depths])
    return [[float(r) for r in rates[starts[i]:starts[i + 1]][:lss_layout(d)[0]]] for i, d in enumerate(depths)]


class MambaDecoder(nn.Module):
    """MambaUPNet: (B, H/32, W/32, dims[0]) -> features at H/16, H/8, H/4 with dims[1:], returned high-res first."""

    dims: Sequence[int]
    depths: Sequence[int]
    d_state: int = 16
    ssm_ratio: float = 2.0
    drop_path: float = 0.2
    scan_method: str = "hilbert"
    directions: int = 8
    scan_impl: str = "auto"
    local_kernels: Sequence[int] = (5, 7)
    dtype: Any = jnp.float32
    fused_directions: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        outputs = []
        for i, (dim, depth, rates) in enumerate(zip(self.dims, self.depths,
                                                    drop_path_rates(self.depths, self.drop_path))):
            if i > 0:
                x = PatchExpand(dim, self.dtype, name=f"layers_up_{i}_upsample")(x)
            _, per_module = lss_layout(depth)
            for j, rate in enumerate(rates):
                x = LSSModule(per_module, self.d_state, self.ssm_ratio, rate, self.scan_method, self.directions,
                              self.scan_impl, tuple(self.local_kernels), self.dtype, self.fused_directions,
                              name=f"layers_up_{i}_blocks_{j}")(x, train)
            if i > 0:
                outputs.insert(0, x)
        return outputs


class MambaAD(nn.Module):
    """Frozen ResNet encoder -> MFF bottleneck -> Mamba decoder; returns both feature pyramids.

    ``__call__(images, train)`` -> ``{"encoder": [e1, e2, e3], "decoder": [d1, d2, d3]}`` (NHWC, H/4 first). The
    encoder runs with frozen batch statistics and its outputs are ``stop_gradient``-ed; keep its parameters out of
    the optimiser (``make_optimizer(..., frozen=("encoder",))``).
    """

    encoder: str = "resnet34"
    decoder_dims: Sequence[int] = (512, 256, 128, 64)
    decoder_depths: Sequence[int] = (3, 4, 6, 3)
    d_state: int = 16
    ssm_ratio: float = 2.0
    drop_path: float = 0.2
    scan_method: str = "hilbert"
    directions: int = 8
    scan_impl: str = "auto"
    local_kernels: Sequence[int] = (5, 7)
    dtype: Any = jnp.float32
    fused_directions: bool = True

    @nn.compact
    def __call__(self, images, train: bool = False):
        if len(self.decoder_dims) != 4 or len(self.decoder_depths) != 4:
            raise ValueError(f"MambaAD needs 4 decoder stages (H/32 -> H/4); got dims {tuple(self.decoder_dims)}, "
                             f"depths {tuple(self.decoder_depths)}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"MambaAD: images have shape {tuple(images.shape)}, expected (batch, height, width, 3) "
                             f"(NHWC, RGB)")
        if images.shape[1] % 32 or images.shape[2] % 32:
            raise ValueError(f"MambaAD needs image sides divisible by 32; got {images.shape[1]}x{images.shape[2]}")
        if self.encoder not in RESNET_ARCHS:
            raise ValueError(f"unknown MambaAD encoder {self.encoder!r}; valid: {sorted(RESNET_ARCHS)}")
        block, layers, width = RESNET_ARCHS[self.encoder]
        for depth in self.decoder_depths:  # said before anything is traced
            lss_layout(depth)
        widths = stage_channels(self.encoder)[2::-1]  # the decoder's stages go H/16 -> H/4: layer3 -> layer1
        if tuple(self.decoder_dims[1:]) != widths:
            raise ValueError(f"MambaAD: decoder_dims {tuple(self.decoder_dims)} do not reconstruct the {self.encoder} "
                             f"features ({widths[::-1]} channels at H/4, H/8, H/16); expected decoder_dims="
                             f"({self.decoder_dims[0]}, {', '.join(map(str, widths))})")
        encoder = ResNet(block, layers, width, ENCODER_STAGES, self.dtype, name="encoder")
        feats = [jax.lax.stop_gradient(f) for f in encoder(images, train=False)]
        x = MFFBottleneck(self.decoder_dims[0], dtype=self.dtype, name="bottleneck")(feats, train)
        decoded = MambaDecoder(self.decoder_dims, self.decoder_depths, self.d_state, self.ssm_ratio, self.drop_path,
                               self.scan_method, self.directions, self.scan_impl, tuple(self.local_kernels),
                               self.dtype, self.fused_directions, name="decoder")(x, train)
        return {"encoder": feats, "decoder": decoded}


def anomaly_map_from_features(encoder, decoder, out_size: tuple[int, int], sigma: float = 4.0,
                              weights: Sequence[float] | None = None):
    """(maps (B, H, W), scores (B,)) as ADer computes them: per scale 1 - cos over channels, bilinear upsampling
    with aligned corners to ``out_size``, weighted sum / (n_scales * sum(weights)), Gaussian blur; score = max."""
    weights = [1.0] * len(encoder) if weights is None else list(weights)
    total = 0.0
    for w, e, d in zip(weights, encoder, decoder):
        e, d = e.astype(jnp.float32), d.astype(jnp.float32)
        dot = jnp.sum(e * d, axis=-1)
        norms = jnp.linalg.norm(e, axis=-1) * jnp.linalg.norm(d, axis=-1)
        cos = dot / jnp.maximum(norms, 1e-8)
        total = total + w * upsample_bilinear_align_corners(1.0 - cos, out_size)
    maps = total / (len(encoder) * sum(weights))
    if sigma > 0:
        maps = gaussian_blur(maps, sigma)
    return maps, maps.reshape(maps.shape[0], -1).max(axis=-1)


@functools.lru_cache(maxsize=8)
def _jitted_maps(config_json: str, sigma: float):
    model = build_mambaad(ml_collections.ConfigDict(json.loads(config_json)))

    def run(variables, images):
        out = model.apply(variables, images, train=False)
        return anomaly_map_from_features(out["encoder"], out["decoder"], images.shape[1:3], sigma)

    return jax.jit(run)


def anomaly_maps(config, variables, images, sigma: float = 4.0):
    """(maps (B, H, W), scores (B,)) for ImageNet-normalised NHWC ``images`` with a MambaAD ``config`` (the model
    section, e.g. from ``ssm_jax.convert.from_torch("mambaad", ...)``) and its ``variables``."""
    images = normalised_images(images, "anomaly_maps")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"anomaly_maps: images have shape {images.shape}, expected (batch, height, width, 3)")
    if "model" in config:
        raise ValueError("anomaly_maps: pass the model section of a config (config.model), as from_torch returns it, "
                         "not the whole config")
    return _jitted_maps(ml_collections.ConfigDict(config).to_json(), float(sigma))(variables, images)
