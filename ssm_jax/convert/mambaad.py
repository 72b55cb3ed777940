"""Official MambaAD checkpoints (lewandofskee/MambaAD on ADer) -> ``ssm_jax.models.mambaad.MambaAD`` variables.

The official model is ``MAMBAAD(net_t = timm ResNet features 1-3, mff_oce = MFF_OCE, net_s = MambaUPNet)``; its
state dict keys map onto ours by the table below. The architecture (encoder arch, decoder dims and depths, state
size, expansion, directions, conv-branch kernels) is read from the checkpoint's shapes, and the scan order from
the index buffers the official code stores (``...scans.index_flat``), which must equal ours for the method found.

The released Real-IAD weight (lewandofskee/MambaAD#31) has the layout of ADer's ``ConvBNSSMBlock``
(zhangzjn/ADer, ``model/mambaad.py``): 1x1 convs ``conv1b3``/``conv1a3`` and ``conv1b5``/``conv1a5``, depthwise
``conv33``, ``conv55`` and ``conv77``, whose forward runs the 7x7 branch as ``conv1a3(conv77(conv1b3(x)))`` and the
5x5 as ``conv1a5(conv55(conv1b5(x)))``, and never calls ``conv33``. It loads as those two branches,
``local_kernels=(5, 7)``, with ``conv33`` left out, and a warning says so.
"""

from __future__ import annotations

import difflib
import re
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssm_jax.convert.common import TRANSFORMS, Rule, batchnorm_rules, convert_state_dict
from ssm_jax.convert.resnet import RESNET_RULES, resnet_held
from ssm_jax.models.mambaad import build_mambaad, mambaad_model_config
from ssm_jax.models.resnet import RESNET_ARCHS
from ssm_jax.ssm import METHODS, scan_orders

TRANSFORMS.setdefault("swap_last2", lambda w: np.swapaxes(w, -1, -2))


def _nested(torch_prefix: str, scope: str, rules: list[Rule]) -> list[Rule]:
    """``rules`` for a sub-network: torch keys under ``torch_prefix``, Flax leaves under ``scope``."""
    return [Rule(torch_prefix + r.pattern, r.target.replace("params/", f"params/{scope}/", 1)
                 .replace("batch_stats/", f"batch_stats/{scope}/", 1), r.transform) for r in rules]


ENCODER_PREFIX = "net_t."  # the frozen ImageNet ResNet's keys in an official checkpoint


def holds_official_encoder(state) -> bool:
    """Whether a state dict is an official MambaAD checkpoint's, its ImageNet ResNet under ``net_t.``, rather than a
    ResNet's own."""
    return "conv1.weight" not in state and f"{ENCODER_PREFIX}conv1.weight" in state
_ENCODER = _nested(re.escape(ENCODER_PREFIX), "encoder", RESNET_RULES)
_BOTTLENECK = _nested(r"mff_oce\.", "bottleneck", [
    Rule(r"conv(1|2|21|31|f)\.weight", "params/conv{1}/kernel", "conv"),
    Rule(r"conv(21|31|f)\.bias", "params/conv{1}/bias"),
    *batchnorm_rules(r"bn(1|2|21|31|f)", "bn{1}"),
    Rule(r"bn_layer\.(\d+)\.conv(\d)\.weight", "params/bn_layer_{1}/conv{2}/kernel", "conv"),
    *batchnorm_rules(r"bn_layer\.(\d+)\.bn(\d)", "bn_layer_{1}/bn{2}"),
    Rule(r"bn_layer\.(\d+)\.downsample\.0\.weight", "params/bn_layer_{1}/downsample_conv/kernel", "conv"),
    *batchnorm_rules(r"bn_layer\.(\d+)\.downsample\.1", "bn_layer_{1}/downsample_bn"),
])

_STAGE = r"net_s\.layers_up\.(\d+)"
_MODULE = _STAGE + r"\.blocks\.(\d+)"
_SSM = _MODULE + r"\.smm_blocks\.(\d+)"
_DEC = "params/decoder/layers_up_{1}"
_HSS = _DEC + "_blocks_{2}/smm_blocks_{3}"
_WRAP = {"b": "conv_in", "a": "conv_out"}

_DECODER = [
    Rule(_STAGE + r"\.upsample\.expand\.weight", _DEC + "_upsample/expand/kernel", "linear"),
    Rule(_STAGE + r"\.upsample\.norm\.weight", _DEC + "_upsample/norm/scale"),
    Rule(_STAGE + r"\.upsample\.norm\.bias", _DEC + "_upsample/norm/bias"),
    Rule(_SSM + r"\.ln_1\.weight", _HSS + "/ln_1/scale"),
    Rule(_SSM + r"\.ln_1\.bias", _HSS + "/ln_1/bias"),
    Rule(_SSM + r"\.self_attention\.(in_proj|out_proj)\.weight", _HSS + "/self_attention/{4}/kernel", "linear"),
    Rule(_SSM + r"\.self_attention\.conv2d\.weight", _HSS + "/self_attention/conv2d/kernel", "conv"),
    Rule(_SSM + r"\.self_attention\.conv2d\.bias", _HSS + "/self_attention/conv2d/bias"),
    Rule(_SSM + r"\.self_attention\.(x_proj_weight|dt_projs_weight)", _HSS + "/self_attention/{4}", "swap_last2"),
    Rule(_SSM + r"\.self_attention\.(dt_projs_bias|A_logs|Ds)", _HSS + "/self_attention/{4}"),
    Rule(_SSM + r"\.self_attention\.out_norm\.weight", _HSS + "/self_attention/out_norm/scale"),
    Rule(_SSM + r"\.self_attention\.out_norm\.bias", _HSS + "/self_attention/out_norm/bias"),
    Rule(_MODULE + r"\.conv1b(\d)\.0\.weight", _DEC + "_blocks_{2}/branch{3}/conv_in/kernel", "conv"),
    Rule(_MODULE + r"\.conv1b(\d)\.0\.bias", _DEC + "_blocks_{2}/branch{3}/conv_in/bias"),
    Rule(_MODULE + r"\.conv1a(\d)\.0\.weight", _DEC + "_blocks_{2}/branch{3}/conv_out/kernel", "conv"),
    Rule(_MODULE + r"\.conv1a(\d)\.0\.bias", _DEC + "_blocks_{2}/branch{3}/conv_out/bias"),
    Rule(_MODULE + r"\.conv(?P<k>\d)(?P=k)\.0\.weight", _DEC + "_blocks_{2}/branch{3}/conv_dw/kernel",
         "conv"),
    Rule(_MODULE + r"\.finalconv11\.weight", _DEC + "_blocks_{2}/finalconv11/kernel", "conv"),
    Rule(_MODULE + r"\.finalconv11\.bias", _DEC + "_blocks_{2}/finalconv11/bias"),
]

MAMBAAD_RULES = _ENCODER + _BOTTLENECK + _DECODER
MAMBAAD_IGNORE = [r".*num_batches_tracked", r".*\.scans\.index_flat(_inv)?"]


def _entry(state, key: str) -> np.ndarray:
    """``state[key]``, a key the architecture is read from; its absence names the key and the checkpoint's closest
    keys beside it (e.g. another VMamba version's names)."""
    if key not in state:
        scope = key.rsplit(".", 1)[0] + "."
        closest = difflib.get_close_matches(key, [k for k in state if k.startswith(scope)], n=3, cutoff=0.0)
        raise ValueError(f"not an official MambaAD state dict: it has no {key}, from which the architecture is read"
                         f"{f'; its closest keys there: {closest}' if closest else ''}")
    return state[key]


def _encoder_arch(state) -> str:
    """The ResNet arch of ``net_t.*``, read from its stages 1-3 (MambaAD's encoder stops there)."""
    held, archs = resnet_held({key.removeprefix(ENCODER_PREFIX): value for key, value in state.items()
                               if key.startswith(ENCODER_PREFIX)})
    if len(archs) != 1:
        raise ValueError(f"the encoder net_t.* is {held or 'no ResNet'}; expected the first stages of one of "
                         f"{sorted(RESNET_ARCHS)}")
    return archs[0]


def _decoder_layout(state) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(dims, depths) of net_s: per stage, the LSS modules and HSS blocks per module found in the keys."""
    blocks = {tuple(map(int, m.groups())) for k in state if (m := re.match(_SSM + r"\.", k))}
    stages = sorted({s for s, _, _ in blocks})
    if stages != list(range(len(stages))) or not stages:
        raise ValueError(f"net_s.layers_up.* has stages {stages}; expected 0, 1, 2, 3")
    depths = tuple(len({(j, i) for s, j, i in blocks if s == stage}) for stage in stages)
    dims = tuple(_entry(state, f"net_s.layers_up.{s}.blocks.0.smm_blocks.0.ln_1.weight").shape[0] for s in stages)
    return dims, depths


def _branch_kernels(state, prefix: str = "net_s.layers_up.0.blocks.0.") -> tuple[list[int], list[int]]:
    """(kernels k with 1x1 wrappers conv1b{k}/conv1a{k}, kernels of the depthwise convs conv{k}{k})."""
    found = {kind: sorted({int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + pattern, k))})
             for kind, pattern in (("wrapped", r"conv1b(\d)\."), ("depthwise", r"conv(\d)\1\."))}
    return found["wrapped"], found["depthwise"]


def _from_ader_layout(state) -> dict:
    """``state`` with ADer's ConvBNSSMBlock branches renamed to the ones its forward runs (``conv1b3 -> conv77 ->
    conv1a3`` becomes the 7x7 branch) and its unused ``conv33`` dropped; other layouts unchanged."""
    if _branch_kernels(state) != ([3, 5], [3, 5, 7]):
        return state
    warnings.warn("the checkpoint has the conv branches of ADer's ConvBNSSMBlock (as the released Real-IAD weight, "
                  "lewandofskee/MambaAD#31), whose forward runs conv1a3(conv77(conv1b3(x))) and conv1a5(conv55("
                  "conv1b5(x))) and never calls conv33: loaded as local_kernels=(5, 7), conv33 left out",
                  stacklevel=3)
    renamed = {}
    for key, value in state.items():
        if re.match(r"net_s\..*\.conv33\.", key):
            continue
        renamed[re.sub(r"^(net_s\..*\.conv1[ab])3\.", r"\g<1>7.", key)] = value
    return renamed


def _local_kernels(state) -> tuple[int, ...]:
    """Kernels of the conv branches (conv1b{k} -> conv{k}{k} -> conv1a{k}); a depthwise conv without its 1x1
    wrappers, or a wrapper without its depthwise conv, is a layout no published forward runs."""
    wrapped, depthwise = _branch_kernels(state)
    if wrapped != depthwise or not wrapped:
        raise ValueError(f"the decoder's conv branches have 1x1 wrappers conv1b{{k}} for k in {wrapped} and depthwise "
                         f"convs conv{{k}}{{k}} for k in {depthwise}: neither MambaAD's layout (5, 7 with both) nor "
                         f"ADer's ConvBNSSMBlock (wrappers 3, 5; depthwise 3, 5, 7)")
    return tuple(wrapped)


def _scan_method(state, directions: int) -> str:
    """The ``ssm_jax.ssm`` method whose first-direction order equals the checkpoint's stored index buffer."""
    key = next((k for k in state if k.endswith("self_attention.scans.index_flat")), None)
    if key is None:
        warnings.warn("the checkpoint stores no scan-order buffers; assuming the paper's 'hilbert' order", stacklevel=3)
        return "hilbert"
    stored = np.asarray(state[key]).reshape(-1)
    side = int(round(np.sqrt(stored.size)))
    for method in METHODS:
        if side * side == stored.size and np.array_equal(scan_orders(method, side, side, directions)[0], stored):
            return method
    raise ValueError(f"the scan order stored in {key} ({side}x{side}) equals none of ssm_jax's methods "
                     f"{list(METHODS)}; converted weights would scan in another order")


def convert_mambaad(state: dict[str, np.ndarray]) -> tuple[ml_collections.ConfigDict, dict]:
    """(config.model, variables) for ``build_mambaad`` from an official MambaAD state dict."""
    if not any(k.startswith("net_s.") for k in state):
        held = resnet_held(state)[0]
        raise ValueError("not a MambaAD state dict: no net_s.* (decoder) keys; expected the official checkpoint "
                         "(its {'net': ...} dict) or its state_dict" + (
                             f"; it holds {held}, an encoder: give its path as config.model.encoder_weights" if held
                             else ""))
    state = _from_ader_layout(state)
    dims, depths = _decoder_layout(state)
    ssm = "net_s.layers_up.0.blocks.0.smm_blocks.0.self_attention."
    a_logs, x_proj = _entry(state, ssm + "A_logs"), _entry(state, ssm + "x_proj_weight")
    d_inner, d_state, directions = a_logs.shape[0] // x_proj.shape[0], a_logs.shape[1], x_proj.shape[0]
    config = mambaad_model_config(encoder=_encoder_arch(state), decoder_dims=dims, decoder_depths=depths,
                                  d_state=int(d_state), ssm_ratio=d_inner / dims[0], directions=int(directions),
                                  scan_method=_scan_method(state, int(directions)),
                                  local_kernels=_local_kernels(state))
    model = build_mambaad(config)
    template = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    variables = convert_state_dict(state, MAMBAAD_RULES, template, ignore=MAMBAAD_IGNORE)
    return config, variables
