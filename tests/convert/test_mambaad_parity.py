"""MambaAD weight parity: a PyTorch MambaAD with the official keys and random weights, converted, gives the same
encoder features, decoder features and anomaly maps (tolerance: max |jax - torch| <= 1e-4 * max |torch|, the
torch reference in float64, ours in float32), with Hilbert scans in 8 directions."""

import re

import flax
import jax
import numpy as np
import pytest
import torch

from ssm_jax.convert import ConversionError, from_torch
from ssm_jax.convert.common import torch_key_for
from ssm_jax.convert.mambaad import MAMBAAD_IGNORE, MAMBAAD_RULES
from ssm_jax.models.mambaad import anomaly_maps, build_mambaad
from tests.convert.torch_mambaad import TorchMambaAD, anomaly_map, randomize

pytestmark = pytest.mark.torch
RTOL = 1e-4
SIZE = 64  # decoder maps 2x2 .. 16x16: every stage is a power-of-two Hilbert square


def _rel(ours, ref):
    ref = np.asarray(ref)
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


def _nhwc(t):
    return t.permute(0, 2, 3, 1).numpy()


def _run_torch(model, images):
    with torch.no_grad():
        feats_t, feats_s = model(images)
    return feats_t, feats_s, anomaly_map(feats_t, feats_s, (SIZE, SIZE))


@pytest.fixture(scope="module")
def official():
    torch.manual_seed(0)
    model = randomize(TorchMambaAD(base_size=SIZE // 32), seed=0).double()
    images = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
    return model, images, _run_torch(model, images)


def test_features_and_maps_match_the_official_model(official):
    model, images, (feats_t, feats_s, ref_maps) = official
    config, variables = from_torch("mambaad", {"net": model.state_dict(), "epoch": 3})
    assert (config.encoder, tuple(config.decoder_depths), config.scan_method, config.directions) == \
        ("resnet34", (3, 4, 6, 3), "hilbert", 8)
    x = _nhwc(images).astype(np.float32)
    out = jax.jit(build_mambaad(config).apply)(variables, x)
    for ours, ref in zip(out["encoder"], feats_t):
        assert _rel(ours, _nhwc(ref)) < RTOL
    for ours, ref in zip(out["decoder"], feats_s):
        assert ours.shape == _nhwc(ref).shape
        assert _rel(ours, _nhwc(ref)) < RTOL
    maps, scores = anomaly_maps(config, variables, x)
    assert maps.shape == (2, SIZE, SIZE)
    assert _rel(maps, ref_maps) < RTOL
    assert _rel(scores, ref_maps.reshape(2, -1).max(1)) < RTOL


def test_every_flax_leaf_names_the_official_key_that_fills_it(official):
    """Read backwards, the rules give each converted leaf exactly the official module's own key for it."""
    state = official[0].state_dict()
    _, variables = from_torch("mambaad", state)
    keys = [torch_key_for("/".join(path), MAMBAAD_RULES) for path in flax.traverse_util.flatten_dict(variables)]
    assert sorted(keys, key=str) == sorted(k for k in state if not any(re.fullmatch(p, k) for p in MAMBAAD_IGNORE))


def test_checkpoint_file_with_ddp_prefix_loads(official, tmp_path):
    model, images, (_, _, ref_maps) = official
    path = tmp_path / "mambaad.pth"
    torch.save({"net": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    config, variables = from_torch("mambaad", str(path))
    maps, _ = anomaly_maps(config, variables, _nhwc(images).astype(np.float32))
    assert _rel(maps, ref_maps) < RTOL


def test_wrong_keys_are_named(official):
    state = {k: v.float() for k, v in official[0].state_dict().items()}
    missing = dict(state)
    del missing["net_s.layers_up.1.blocks.0.finalconv11.bias"]
    with pytest.raises(ConversionError, match=r"layers_up_1_blocks_0/finalconv11/bias"):
        from_torch("mambaad", missing)
    extra = {**state, "net_s.layers_up.0.blocks.0.extra_gate.weight": torch.zeros(3)}
    with pytest.raises(ConversionError, match=r"extra_gate"):
        from_torch("mambaad", extra)
    misshaped = {**state, "mff_oce.convf.bias": torch.zeros(7)}
    with pytest.raises(ConversionError, match=r"mff_oce\.convf\.bias: \(7,\)"):
        from_torch("mambaad", misshaped)
    ssm = "net_s.layers_up.0.blocks.0.smm_blocks.0.self_attention."
    renamed = {(k.replace("x_proj_weight", "x_proj.0.weight") if k.startswith(ssm) else k): v for k, v in state.items()}
    with pytest.raises(ValueError, match=rf"no {ssm}x_proj_weight, from which the architecture is read.*"
                                         rf"x_proj\.0\.weight"):  # e.g. another VMamba version's key names
        from_torch("mambaad", renamed)


def test_a_scan_order_we_do_not_have_is_refused(official):
    state = {k: v.float() for k, v in official[0].state_dict().items()}
    key = "net_s.layers_up.3.blocks.0.smm_blocks.0.self_attention.scans.index_flat"
    state = {k: v for k, v in state.items() if not k.endswith("index_flat")}
    state[key] = torch.from_numpy(np.random.default_rng(0).permutation(SIZE * SIZE // 16))[None, None]
    with pytest.raises(ValueError, match="equals none of ssm_jax's methods"):
        from_torch("mambaad", state)


@pytest.mark.slow  # a second official model in float64; the default run compares the main layout
def test_released_realiad_layout_runs_the_branches_aders_forward_runs():
    """lewandofskee/MambaAD#31: the Real-IAD weight has ADer's ConvBNSSMBlock layout, whose forward runs
    conv1a3(conv77(conv1b3(x))) and conv1a5(conv55(conv1b5(x))) and never calls conv33. The reference is the official
    (5, 7) model with its 7x7 wrappers stored under ADer's names and a random, unused conv33 added."""
    torch.manual_seed(1)
    model = randomize(TorchMambaAD(depths=(2, 2, 2, 2), base_size=SIZE // 32, kernels=(5, 7)), seed=1).double()
    state = {re.sub(r"\.conv1([ab])7\.", r".conv1\g<1>3.", k): v for k, v in model.state_dict().items()}
    for key in [k for k in state if k.endswith(".conv77.0.weight")]:
        state[key.replace(".conv77.", ".conv33.")] = torch.randn(state[key].shape[0], 1, 3, 3, dtype=torch.float64)
    images = torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64)
    _, _, ref_maps = _run_torch(model, images)
    with pytest.warns(UserWarning, match="ADer's ConvBNSSMBlock.*conv33 left out"):
        config, variables = from_torch("mambaad", state)
    assert tuple(config.local_kernels) == (5, 7) and tuple(config.decoder_depths) == (2, 2, 2, 2)
    maps, _ = anomaly_maps(config, variables, _nhwc(images).astype(np.float32))
    assert _rel(maps, ref_maps) < RTOL


def test_conv_branches_of_no_known_layout_are_refused(official):
    state = {k: v for k, v in official[0].state_dict().items() if ".conv1a7." not in k and ".conv1b7." not in k}
    with pytest.raises(ValueError, match=r"wrappers conv1b\{k\} for k in \[5\] and depthwise convs conv\{k\}\{k\} "
                                         r"for k in \[5, 7\]"):
        from_torch("mambaad", state)


def test_not_a_mambaad_checkpoint():
    with pytest.raises(ValueError, match="not a MambaAD state dict") as info:
        from_torch("mambaad", {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    assert "encoder_weights" not in str(info.value)  # no ResNet stages: nothing more to say
    resnet18 = {f"layer{stage}.{block}.conv{conv}.weight": np.zeros((64, 64, 3, 3), np.float32)
                for stage in (1, 2, 3, 4) for block in (0, 1) for conv in (1, 2)}
    with pytest.raises(ValueError, match=r"it holds a resnet18 \(basic blocks, 2-2-2-2\), an encoder: give its path "
                                         r"as config.model.encoder_weights"):
        from_torch("mambaad", resnet18)
