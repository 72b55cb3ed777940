"""MemoryMamba (Wang, Hu & Zhou, 2024): a memory-augmented SS2D classifier for defect recognition.

PatchEmbed (/4) -> stages of Mem-SSM blocks, PatchMerging between stages (spatial /2, channels to the next
``dims`` entry) -> LayerNorm -> global average pool -> MLP head -> logits (eq. 3-6).

Mem-SSM block (eq. 8-22), for input F (B, H, W, C):
    Z  = Linear(F)                                             linear_in                      (8)
    F~ = Conv(Z)                                               memory_conv, depthwise 3x3     (14)
    coarse: h_c = MLP_c(pool(F~)) in R^c per image; a_c = softmax(h_c); M_c = a_c @ bank_c   (15-18)
    fine:   h_f = MLP_f(F~) in R^f per position;    a_f = softmax(h_f); M_f = a_f @ bank_f   (15-18)
    fusion: z = pool(Z), v = pool(M) (identity for the coarse vector), beta = sim(v, z),
            w = beta * gain * v, F_bar = Z + w_c + w_f broadcast over H, W                  (19-22)
    S = SS2D(F_bar); N = LayerNorm(S); F' = Linear(F + DropPath(N))                          (11-13)

Choices where the paper is silent or ambiguous (all documented, all switchable by config where it matters):
  * "Conv" (eq. 14) is one depthwise 3x3 conv shared by both memories; MLP_c / MLP_f are Dense(C)-GELU-Dense.
  * Coarse = one query per image (from the pooled conv features); fine = one query per spatial position.
    Memory banks are learnable (size, C) tables, init N(0, 0.02).
  * Fusion similarity ``similarity``: "cos" (cosine, as is), "l1"/"l2": 1 / (1 + d) with d the mean absolute /
    root-mean-square difference per channel, so beta is in (0, 1] and 1 for identical vectors.
  * The fusion has a learnable per-channel ``gain_c`` / ``gain_f`` (init 1, so eq. 22 exactly at init): the
    paper gives the fusion parameters (Theta_Fusion, eq. 10) without saying where they are.
  * ``use_fusion=False`` adds the pooled memory vectors unweighted (F_bar = Z + v_c + v_f): the ablation removes
    the similarity weighting, the memory still reaches the features.
  * ``linear_out`` (eq. 13) is initialised to the identity so a block starts as F + N (a clean residual path
    through deep stacks); ``linear_in`` has the default init.
  * M_hat_f of eq. 24 ("processed through an MLP") is ``fine_proj``(M_f) per position; InfoNCE pairs it with Z.
  * Stochastic depth (``drop_path_rate``, linear over blocks as in VMamba) is not in the paper: default 0. Each
    model call draws one ``dropout`` key and splits it over all blocks, so both block layouts drop the same samples.
  * ``stem="conv"`` / ``downsample="conv"`` (not in the paper; defaults "patch" / "merge", the paper's): VMamba v2's
    overlapping convolutions in place of the 4 x 4 patchify and the 2 x 2 merging (``nn.ConvStem``,
    ``nn.ConvDownsample``), for small training sets, where early convolutions are known to help.

Block layouts: by default each block is its own module ``stage{s}_block{j}`` (the layout of existing checkpoints).
``scan_blocks=True`` makes each stage one ``nn.scan`` over its blocks, ``stage{s}_blocks`` with parameters stacked
on a leading axis, so a stage compiles once instead of once per block (the 27-block stages of small/base).
``stack_blocks`` / ``unstack_blocks`` convert parameters between the two. ``remat="block"`` recomputes each
block's activations in the backward pass (less memory, about one more forward of compute).

Presets follow VMamba v0 (the version the paper compares with): tiny depths (2, 2, 9, 2), dims 96..768;
small (2, 2, 27, 2), 96..768; base (2, 2, 27, 2), 128..1024; d_state 16, expand 2, 4-direction sweep.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssm_jax.models.fields import model_fields, with_defaults
from ssm_jax.nn import SS2D, ConvDownsample, ConvStem, Mlp, PatchEmbed, PatchMerging

SIMILARITIES = ("cos", "l1", "l2")
REMAT = ("none", "block")
STEMS = ("patch", "conv")  # the paper's 4 x 4 patchify, or VMamba v2's two overlapping 3 x 3 stride-2 convolutions
DOWNSAMPLES = ("merge", "conv")  # Swin's 2 x 2 patch merging, or VMamba's 3 x 3 stride-2 convolution

memorymamba_presets = {
    "tiny": {"depths": (2, 2, 9, 2), "dims": (96, 192, 384, 768)},
    "small": {"depths": (2, 2, 27, 2), "dims": (96, 192, 384, 768)},
    "base": {"depths": (2, 2, 27, 2), "dims": (128, 256, 512, 1024)},
}

MODEL_DEFAULTS = {
    "preset": "tiny",
    "depths": None,
    "dims": None,
    "patch_size": 4,
    "stem": "patch",
    "downsample": "merge",
    "d_state": 16,
    "expand": 2,
    "dt_rank": "auto",
    "scan_method": "sweep",
    "directions": 4,
    "scan_impl": "auto",
    "fused_directions": True,
    "coarse_size": 32,
    "fine_size": 128,
    "similarity": "cos",
    "use_coarse_memory": True,
    "use_fine_memory": True,
    "use_fusion": True,
    "drop_path_rate": 0.0,
    "scan_blocks": False,
    "remat": "none",
    "dtype": "float32",
}


def similarity(a, b, kind: str, eps: float = 1e-6):
    """Similarity of (..., C) vectors along the last axis: "cos", or 1/(1+d) for d = mean |a-b| ("l1") / RMS ("l2")."""
    if kind == "cos":  # squared norms clamped, so a zero vector gives 0 with finite gradients
        norms = jnp.maximum(jnp.sum(a * a, axis=-1), eps ** 2) * jnp.maximum(jnp.sum(b * b, axis=-1), eps ** 2)
        return jnp.sum(a * b, axis=-1) * jax.lax.rsqrt(norms)
    if kind == "l1":
        return 1.0 / (1.0 + jnp.mean(jnp.abs(a - b), axis=-1))
    if kind == "l2":
        return 1.0 / (1.0 + jnp.sqrt(jnp.mean(jnp.square(a - b), axis=-1) + eps ** 2))
    raise ValueError(f"similarity: unknown kind {kind!r}; valid: {', '.join(SIMILARITIES)}")


def drop_path(x, rate, key):
    """Stochastic depth with a possibly traced ``rate``: zero each sample with probability rate, scale the rest.

    The rate may be a scanned input (one per block), so there is no Python branch on its value; rate 0 keeps x.
    """
    keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros_like(x))


def _identity_init(key, shape, dtype=jnp.float32):
    del key
    return jnp.eye(shape[0], shape[1], dtype=dtype)


class MemoryReader(nn.Module):
    """Soft read of a learnable memory bank (eq. 15-18) for inputs of any leading shape.

    x (..., C) -> (query h (..., size), read softmax(h) @ bank (..., C), bank (size, C)).
    """

    size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        query = Mlp(channels, self.size, dtype=self.dtype, name="query")(x)
        bank = self.param("bank", nn.initializers.normal(0.02), (self.size, channels), jnp.float32)
        weights = jax.nn.softmax(query.astype(jnp.float32), axis=-1).astype(self.dtype)
        return query, weights @ bank.astype(self.dtype), bank


class MemoryFusion(nn.Module):
    """Eq. 19-22: Z + sum over memories of sim(v, pool(Z)) * gain * v, broadcast over H, W.

    ``memories`` maps a name ("c", "f") to a pooled memory vector (B, C); each gets a gain ``gain_<name>``.
    """

    similarity: str = "cos"

    @nn.compact
    def __call__(self, z, memories: dict):
        pooled = jnp.mean(z.astype(jnp.float32), axis=(1, 2))
        for name, v in sorted(memories.items()):
            gain = self.param(f"gain_{name}", nn.initializers.ones, (z.shape[-1],), jnp.float32)
            beta = similarity(v.astype(jnp.float32), pooled, self.similarity)[:, None]
            z = z + (beta * gain * v)[:, None, None, :].astype(z.dtype)
        return z


class MemSSMBlock(nn.Module):
    """One Mem-SSM block (see the module docstring): (F, drop) -> (F', aux), aux the memory quantities of the losses.

    ``drop`` is None (no stochastic depth) or (rate, dropout key); the call signature is nn.scan's (carry, xs).
    """

    dim: int
    d_state: int = 16
    expand: int = 2
    dt_rank: int | str = "auto"
    scan_method: str = "sweep"
    directions: int = 4
    scan_impl: str = "auto"
    fused_directions: bool = True
    coarse_size: int = 32
    fine_size: int = 128
    similarity: str = "cos"
    use_coarse_memory: bool = True
    use_fine_memory: bool = True
    use_fusion: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, drop=None):
        z = nn.Dense(self.dim, dtype=self.dtype, name="linear_in")(x)
        aux, memories = {}, {}
        if self.use_coarse_memory or self.use_fine_memory:
            conv = nn.Conv(self.dim, (3, 3), padding="SAME", feature_group_count=self.dim, dtype=self.dtype,
                           name="memory_conv")(z)
        if self.use_coarse_memory:
            query, read, bank = MemoryReader(self.coarse_size, self.dtype, name="coarse_memory")(conv.mean((1, 2)))
            aux.update(coarse_queries=query, coarse_banks=bank)
            memories["c"] = read
        if self.use_fine_memory:
            _, read, bank = MemoryReader(self.fine_size, self.dtype, name="fine_memory")(conv)
            aux.update(fine_features=z, fine_banks=bank,
                       fine_memory=Mlp(self.dim, self.dim, dtype=self.dtype, name="fine_proj")(read))
            memories["f"] = read.mean((1, 2))
        if self.use_fusion:
            fused = MemoryFusion(self.similarity, name="fusion")(z, memories)
        else:
            fused = z + sum(v[:, None, None, :] for v in memories.values())
        s = SS2D(self.dim, d_state=self.d_state, expand=self.expand, dt_rank=self.dt_rank,
                 scan_method=self.scan_method, directions=self.directions, scan_impl=self.scan_impl,
                 fused_directions=self.fused_directions, dtype=self.dtype, name="ss2d")(fused)
        n = nn.LayerNorm(dtype=self.dtype, name="norm")(s)
        if drop is not None:
            n = drop_path(n, *drop)
        out = nn.Dense(self.dim, dtype=self.dtype, kernel_init=_identity_init, name="linear_out")(x + n)
        return out, aux


class MemoryMamba(nn.Module):
    """MemoryMamba classifier, NHWC images -> dict.

    Output keys (per-block entries are tuples over all blocks, in order; keys of a disabled memory are absent):
      logits (B, num_classes); features (B, dims[-1]) pooled before the head;
      coarse_queries (B, coarse_size) and coarse_banks (coarse_size, C_i)    [use_coarse_memory];
      fine_features Z_i (B, H_i, W_i, C_i), fine_memory M_hat_f (B, H_i, W_i, C_i) and
      fine_banks (fine_size, C_i)                                             [use_fine_memory].
      feature_map (B, H / 32, W / 32, dims[-1]) the normed last stage, before pooling (what masked-image
        pretraining decodes, ``models.masked_image``).
    ``train=True`` enables stochastic depth (needs the ``dropout`` RNG when ``drop_path_rate > 0``). ``token_mask``
    (B, H / patch_size, W / patch_size) bool replaces the embedded patches where True by a learned ``mask_token``
    (masked-image pretraining; the parameter exists only in models initialised with a mask).
    ``scan_blocks`` / ``remat``: block layout and rematerialisation (module docstring); outputs do not depend on them.
    """

    num_classes: int
    depths: Sequence[int] = (2, 2, 9, 2)
    dims: Sequence[int] = (96, 192, 384, 768)
    patch_size: int = 4
    stem: str = "patch"
    downsample: str = "merge"
    d_state: int = 16
    expand: int = 2
    dt_rank: int | str = "auto"
    scan_method: str = "sweep"
    directions: int = 4
    scan_impl: str = "auto"
    fused_directions: bool = True
    coarse_size: int = 32
    fine_size: int = 128
    similarity: str = "cos"
    use_coarse_memory: bool = True
    use_fine_memory: bool = True
    use_fusion: bool = True
    drop_path_rate: float = 0.0
    scan_blocks: bool = False
    remat: str = "none"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, train: bool = False, token_mask=None):
        if len(self.depths) != len(self.dims):
            raise ValueError(f"MemoryMamba: depths {tuple(self.depths)} and dims {tuple(self.dims)} differ in length")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"MemoryMamba: unknown similarity {self.similarity!r}; valid: {', '.join(SIMILARITIES)}")
        if not isinstance(self.scan_blocks, bool):
            raise ValueError(f"MemoryMamba: scan_blocks must be True or False, got {self.scan_blocks!r}")
        if self.remat not in REMAT:
            raise ValueError(f"MemoryMamba: unknown remat {self.remat!r}; valid: {', '.join(REMAT)}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"MemoryMamba: drop_path_rate={self.drop_path_rate}; expected a value in [0, 1)")
        if self.stem not in STEMS:
            raise ValueError(f"MemoryMamba: unknown stem {self.stem!r}; valid: {', '.join(STEMS)}")
        if self.downsample not in DOWNSAMPLES:
            raise ValueError(f"MemoryMamba: unknown downsample {self.downsample!r}; valid: {', '.join(DOWNSAMPLES)}")
        if self.stem == "conv" and self.patch_size != 4:
            raise ValueError(f"MemoryMamba: stem 'conv' embeds 4 x 4 patches, got patch_size {self.patch_size}")
        if images.ndim != 4:
            raise ValueError(f"MemoryMamba: images have shape {tuple(images.shape)}, expected (batch, height, width, "
                             f"channels) (NHWC)")
        if images.shape[1] <= 4 < images.shape[3]:  # a few rows and many channels: channels come first
            raise ValueError(f"MemoryMamba: images have shape {tuple(images.shape)}, which reads as (batch, channels, "
                             f"height, width) (NCHW); expected (batch, height, width, channels) (NHWC): pass "
                             f"images.transpose(0, 2, 3, 1)")
        images = images.astype(self.dtype)
        if self.stem == "conv":
            x = ConvStem(self.dims[0], dtype=self.dtype, name="patch_embed")(images)
        else:
            x = PatchEmbed(self.dims[0], self.patch_size, dtype=self.dtype, name="patch_embed")(images)
        if token_mask is not None:
            if token_mask.shape != x.shape[:3]:
                raise ValueError(f"MemoryMamba: token_mask has shape {token_mask.shape}, expected the patch grid "
                                 f"{x.shape[:3]}")
            token = self.param("mask_token", nn.initializers.normal(0.02), (self.dims[0],), jnp.float32)
            x = jnp.where(token_mask[..., None], token.astype(x.dtype), x)
        total = sum(self.depths)
        drops = None  # per block (rate, key), sliced per stage; the same in both layouts
        if train and self.drop_path_rate > 0:
            drops = (jnp.asarray([self.drop_path_rate * i / max(total - 1, 1) for i in range(total)], jnp.float32),
                     jax.random.split(self.make_rng("dropout"), total))
        block_kwargs = dict(d_state=self.d_state, expand=self.expand, dt_rank=self.dt_rank,
                            scan_method=self.scan_method, directions=self.directions, scan_impl=self.scan_impl,
                            fused_directions=self.fused_directions, coarse_size=self.coarse_size,
                            fine_size=self.fine_size, similarity=self.similarity,
                            use_coarse_memory=self.use_coarse_memory, use_fine_memory=self.use_fine_memory,
                            use_fusion=self.use_fusion, dtype=self.dtype)
        block = MemSSMBlock
        if self.remat == "block":  # CSE prevention is only needed outside a scan (jax.checkpoint docs)
            block = nn.remat(block, prevent_cse=not self.scan_blocks)
        auxes = []
        for stage, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            if stage > 0:
                down = ConvDownsample if self.downsample == "conv" else PatchMerging
                x = down(dim, dtype=self.dtype, name=f"stage{stage}_downsample")(x)
            first = len(auxes)
            stage_drops = None if drops is None else jax.tree.map(lambda a: a[first:first + depth], drops)
            if self.scan_blocks:
                stacked = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True}, length=depth)
                x, ys = stacked(dim, name=f"stage{stage}_blocks", **block_kwargs)(x, stage_drops)
                auxes.extend({key: v[j] for key, v in ys.items()} for j in range(depth))
            else:
                for j in range(depth):
                    drop = None if stage_drops is None else jax.tree.map(lambda a: a[j], stage_drops)
                    x, aux = block(dim, name=f"stage{stage}_block{j}", **block_kwargs)(x, drop)
                    auxes.append(aux)
        x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)
        features = x.mean(axis=(1, 2))
        logits = Mlp(self.dims[-1], self.num_classes, dtype=self.dtype, name="head")(features)
        out = {"logits": logits.astype(jnp.float32), "features": features, "feature_map": x}
        for key in auxes[0] if auxes else ():
            out[key] = tuple(aux[key] for aux in auxes)
        return out


def memorymamba_model_config(num_classes: int, **overrides) -> ml_collections.ConfigDict:
    """A ``config.model`` ConfigDict with every field build_memorymamba reads, at its default."""
    return with_defaults(MODEL_DEFAULTS, overrides, "memorymamba_model_config", num_classes=num_classes)


def build_memorymamba(config) -> MemoryMamba:
    """MemoryMamba from ``config.model`` (or a model-level ConfigDict / dict).

    Fields (defaults in MODEL_DEFAULTS): num_classes (required); preset ("tiny" | "small" | "base") giving
    depths/dims, overridden by non-None ``depths`` / ``dims``; patch_size 4; stem "patch" | "conv" (``STEMS``);
    downsample "merge" | "conv" between stages (``DOWNSAMPLES``); d_state 16; expand 2;
    dt_rank "auto"; scan_method "sweep"; directions 4; scan_impl "auto"; fused_directions True (each direction
    scanned in place, no gathered copies: ``SS2D``); coarse_size 32; fine_size 128;
    similarity "cos" | "l1" | "l2"; use_coarse_memory / use_fine_memory / use_fusion True;
    drop_path_rate 0.0 (in [0, 1)); scan_blocks False (True: each stage one nn.scan over its blocks, parameters
    ``stage{s}_blocks`` stacked on a leading axis, compiled once per stage; ``stack_blocks`` / ``unstack_blocks``
    convert parameters of the default per-block layout); remat "none" | "block" (recompute each block's
    activations in the backward pass); dtype "float32" | "bfloat16" (activations; parameters stay float32).
    """
    fields = model_fields(config, MODEL_DEFAULTS, "build_memorymamba", required=("num_classes",))
    preset = fields.pop("preset")
    if preset is not None and preset not in memorymamba_presets:
        raise ValueError(f"build_memorymamba: unknown preset {preset!r}; valid: {', '.join(memorymamba_presets)}")
    for key in ("depths", "dims"):
        if fields[key] is None:
            if preset is None:
                raise ValueError(f"build_memorymamba: set config.model.{key} or config.model.preset")
            fields[key] = memorymamba_presets[preset][key]
        fields[key] = tuple(int(v) for v in fields[key])
    return MemoryMamba(**fields)


_BLOCK = re.compile(r"(stage(\d+))_block(\d+)")
_BLOCKS = re.compile(r"(stage\d+)_blocks")
_DOWNSAMPLE = re.compile(r"stage(\d+)_downsample")


def stack_blocks(params) -> dict:
    """Parameters of the per-block layout (``stage{s}_block{j}``) -> the ``scan_blocks`` layout (``stage{s}_blocks``,
    leaves stacked over j on a new leading axis); other entries are kept. Exact (no arithmetic)."""
    out, stages = {}, {}
    for name, value in params.items():
        match = _BLOCK.fullmatch(name)
        if match:
            stages.setdefault(match[1], {})[int(match[3])] = value
        else:
            out[name] = value
    for stage, blocks in stages.items():
        if sorted(blocks) != list(range(len(blocks))):
            raise ValueError(f"stack_blocks: {stage} has blocks {sorted(blocks)}; expected 0..{len(blocks) - 1}")
        out[f"{stage}_blocks"] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(blocks[j] for j in sorted(blocks)))
    return out


def unstack_blocks(params) -> dict:
    """Inverse of ``stack_blocks``: ``stage{s}_blocks`` (leading axis = block) -> ``stage{s}_block{j}``. Exact."""
    out = {}
    for name, value in params.items():
        match = _BLOCKS.fullmatch(name)
        if not match:
            out[name] = value
            continue
        depth = {leaf.shape[0] for leaf in jax.tree.leaves(value)}
        if len(depth) != 1:
            raise ValueError(f"unstack_blocks: {name} leaves have different leading sizes {sorted(depth)}")
        for j in range(depth.pop()):
            out[f"{match[1]}_block{j}"] = jax.tree.map(lambda leaf: leaf[j], value)
    return out


def layer_ids(params) -> tuple[dict[str, int], int]:
    """(each top-level entry of per-block-layout parameters -> its layer, the number of blocks n), counted as SimMIM
    counts Swin's layers: the patch embedding (and a mask token) 0, the blocks 1..n in order over the stages, a
    stage's downsampling the layer of the block before it, the final norm and the head n + 1. What
    layer-wise learning-rate decay scales by (``training.layer_decay``); ``unstack_blocks`` gives this layout."""
    depths: dict[int, int] = {}
    for name in params:
        if match := _BLOCK.fullmatch(name):
            depths[int(match[2])] = max(depths.get(int(match[2]), 0), int(match[3]) + 1)
    first = {stage: 1 + sum(d for s, d in depths.items() if s < stage) for stage in depths}
    total = sum(depths.values())
    ids = {}
    for name in params:
        if name in ("patch_embed", "mask_token"):
            ids[name] = 0
        elif name in ("norm", "head"):
            ids[name] = total + 1
        elif match := _BLOCK.fullmatch(name):
            ids[name] = first[int(match[2])] + int(match[3])
        elif (match := _DOWNSAMPLE.fullmatch(name)) and int(match[1]) in first:
            ids[name] = first[int(match[1])] - 1
        else:
            raise ValueError(f"layer_ids: no layer for the parameters {name!r}; MemoryMamba's are patch_embed, "
                             f"mask_token, stage<s>_block<j>, stage<s>_blocks, stage<s>_downsample, norm and head")
    return ids, total
