"""torch ResNet state dict -> Flax: same stage features as torch, checkpoint loading variants, error reports.

Tolerance: every stage feature within ``max|jax - torch| <= 1e-4 * max|torch|`` (float32 on both sides; the
measured error is below 1e-6 relative).
"""

import argparse
import re
import sys
import warnings

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from PIL import Image

from ssm_jax.convert import ConversionError, from_torch, load_state_dict
from ssm_jax.convert.common import torch_key_for
from ssm_jax.convert.resnet import RESNET_IGNORE, RESNET_RULES, convert_resnet
from ssm_jax.models import RESNET_ARCHS, build_resnet
from ssm_jax.models.resnet_classifier import build_resnet_classifier, resnet_model_config
from ssm_jax.training import classification
from ssm_jax.training.mesh import make_mesh
from ssm_jax.training.pretrained_encoder import read_encoder_weights
from tests.convert.torch_resnet import TorchResNet

RTOL = 1e-4
pytestmark = pytest.mark.torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Inputs are tiny: more torch threads only spin on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torch_resnet(arch, num_stages=4, seed=0):
    """Random weights and random BatchNorm affine parameters and running statistics, in eval mode."""
    torch.manual_seed(seed)
    block, layers, width_per_group = RESNET_ARCHS[arch]
    model = TorchResNet(block, layers, width_per_group, num_stages)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def assert_same_features(model, config, variables, size=64):
    images = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = [f.numpy().transpose(0, 2, 3, 1) for f in model(torch.from_numpy(images))]
    flax_model = build_resnet(config.arch, config.out_stages)
    actual = jax.jit(flax_model.apply)(variables, jnp.asarray(images.transpose(0, 2, 3, 1)))
    assert len(actual) == len(expected)
    for stage, (a, e) in enumerate(zip(actual, expected), start=1):
        assert a.shape == e.shape, stage
        error, scale = float(np.abs(np.asarray(a) - e).max()), float(np.abs(e).max())
        assert error <= RTOL * scale, f"stage {stage}: max error {error} > {RTOL} * {scale}"


@pytest.fixture(scope="module")
def resnet18():
    """The torch state dict and its conversion: other ways of passing the same weights must give the same."""
    state = torch_resnet("resnet18").state_dict()
    return state, from_torch("resnet18", state)[1]


def assert_same_variables(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, actual, expected)


@pytest.mark.parametrize("arch, size", [("resnet18", 64), ("resnet34", 64), ("resnet50", 64),
                                        ("wide_resnet50_2", 32)])
def test_parity(arch, size):
    model = torch_resnet(arch)
    config, variables = from_torch(arch, model.state_dict())
    assert config.arch == arch and tuple(config.out_stages) == (1, 2, 3, 4)
    assert set(variables) == {"params", "batch_stats"}
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(variables))
    assert_same_features(model, config, variables, size)


def test_load_from_pth_file(resnet18, tmp_path):
    state, expected = resnet18
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a tensors-only file loads with weights_only=True, silently
        assert_same_variables(from_torch("resnet18", path)[1], expected)
    assert_same_variables(from_torch("resnet18", str(path))[1], expected)


def test_checkpoint_with_objects_is_refused_unless_trusted(resnet18, tmp_path, monkeypatch):
    """A file holding pickled objects besides tensors would run code when loaded: refused, naming the file and the
    opt-in; with torch's own opt-in set it loads, a whole pickled module (``torch.save(model)``) too."""
    state, expected = resnet18
    path, whole = tmp_path / "checkpoint.pth", tmp_path / "whole.pth"
    torch.save({"net": state, "epoch": 3, "args": argparse.Namespace(lr=1e-3)}, path)
    torch.save({"model": torch_resnet("resnet18")}, whole)
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    for refused, held in ((path, "argparse.Namespace"), (whole, "tests.convert.torch_resnet.TorchResNet")):
        with pytest.raises(ValueError, match=f"{refused.name} holds a pickled {held} besides tensors; .*"
                                             f"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1") as info:
            from_torch("resnet18", refused)
        assert "\x1b" not in str(info.value)  # none of torch's terminal colour codes
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    assert_same_variables(from_torch("resnet18", path)[1], expected)
    assert_same_variables(from_torch("resnet18", whole)[1], expected)


@pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")  # torch's, making the file
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_torchscript_archive_is_named_and_loads_when_trusted(resnet18, tmp_path, monkeypatch):
    state, expected = resnet18
    model = torch_resnet("resnet18")
    model.load_state_dict(state)
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 32, 32)), path)
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    with pytest.raises(ValueError, match=r"scripted.pt is a TorchScript archive \(torch.jit.save\); loading it runs "
                                         r"its code. If you trust it, rerun with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1"):
        from_torch("resnet18", path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    assert_same_variables(from_torch("resnet18", path)[1], expected)


def test_a_trusted_module_whose_class_is_not_importable_is_named(tmp_path, monkeypatch):
    """Loaded where the model's code is not: said as such, not as a truncated or corrupt file."""
    (tmp_path / "lab_models_x1.py").write_text("import torch\nclass Net(torch.nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import lab_models_x1

    torch.save(lab_models_x1.Net(2, 3), tmp_path / "whole.pth")
    monkeypatch.delitem(sys.modules, "lab_models_x1")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match=r"whole.pth holds a pickled object whose class cannot be imported here "
                                         r"\(No module named 'lab_models_x1'\); save the state dict alone"):
        load_state_dict(tmp_path / "whole.pth")


def test_a_mismatch_names_the_file(resnet18, tmp_path):
    state, _ = resnet18
    path = tmp_path / "line_3_encoder.pth"
    torch.save({k: v for k, v in state.items() if k != "layer2.1.bn2.running_var"}, path)
    with pytest.raises(ConversionError, match=r"^\S*line_3_encoder.pth: state dict does not match the Flax variables:"
                                              r"\n1 missing .*\n  batch_stats/layer2_1/bn2/var"):
        from_torch("resnet18", path)


def test_encoder_weights_from_an_official_mambaad_checkpoint(tmp_path, capsys):
    """Its frozen encoder ``net_t.*`` (the ImageNet ResNet MambaAD started from) serves as encoder_weights; each read
    says what was read from where."""
    plain, official = tmp_path / "resnet34.pth", tmp_path / "mambaad_mvtec.pth"
    state = torch_resnet("resnet34", 3).state_dict()
    torch.save(state, plain)
    torch.save({"net": {**{f"net_t.{k}": v for k, v in state.items()}, "net_s.head.weight": torch.zeros(2)}}, official)
    assert_same_variables(read_encoder_weights("resnet34", str(official), last_stage=3),
                          read_encoder_weights("resnet34", str(plain), last_stage=3))
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith(f"encoder: resnet34 stages 1-3 read from {official} (its net_t.*), ")
    assert said[1].startswith(f"encoder: resnet34 stages 1-3 read from {plain}, ")
    assert said[0].endswith(" parameters") and said[0].split(", ")[-1] == said[1].split(", ")[-1]


def test_a_torch_module_stands_for_its_state_dict(resnet18):
    state, expected = resnet18
    model = torch_resnet("resnet18")
    model.load_state_dict(state)
    assert_same_variables(from_torch("resnet18", model)[1], expected)
    with pytest.raises(TypeError, match="expected a checkpoint's path, a state dict or a torch module, got a list"):
        from_torch("resnet18", [state])


def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path):
    """An image given as the checkpoint is not taken for a pickle with objects in it (torch's weights-only error)."""
    image = tmp_path / "part.png"
    Image.new("RGB", (8, 8)).save(image)
    with pytest.raises(ValueError, match=r"part.png is not a PyTorch checkpoint \(it starts with b'\\x89PNG"):
        from_torch("resnet18", image)


def test_load_wrapped_dict_and_wrapper_prefixes(resnet18, tmp_path):
    """The wrappers training code puts around weights: checkpoint dicts, DDP, torch.compile, Lightning."""
    state, expected = resnet18
    assert_same_variables(from_torch("resnet18", {"net": state, "epoch": 3})[1], expected)
    assert_same_variables(from_torch("resnet18", {"state_dict": state})[1], expected)
    for prefix in ("module.", "_orig_mod.", "model.", "model._orig_mod.", "module._orig_mod."):
        assert_same_variables(from_torch("resnet18", {f"{prefix}{k}": v for k, v in state.items()})[1], expected)
    path = tmp_path / "tutorial.pth"  # PyTorch's tutorial checkpoint
    torch.save({"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {"param_groups": []}}, path)
    assert_same_variables(from_torch("resnet18", path)[1], expected)
    assert set(load_state_dict({"model.a": np.ones(1), "b": np.ones(1)})) == {"model.a", "b"}  # not on every key
    torch.save({"weights": {"conv1.weight": "not a tensor"}}, path)
    with pytest.raises(ValueError, match=r"tutorial.pth: entry 'weights' is a dict, not a tensor"):
        load_state_dict(path)


def test_load_npz(resnet18, tmp_path):
    state, expected = resnet18
    path = tmp_path / "resnet18.npz"
    np.savez(path, **{k: v.numpy() for k, v in state.items()})
    assert_same_variables(from_torch("resnet18", path)[1], expected)


def test_load_state_dict_dtypes(resnet18):
    state = load_state_dict({**resnet18[0], "half": torch.ones(2, dtype=torch.bfloat16)})
    assert state["conv1.weight"].dtype == np.float32 and state["half"].dtype == np.float32
    assert np.issubdtype(state["bn1.num_batches_tracked"].dtype, np.integer)


def test_encoder_under_prefix(resnet18):
    """MambaAD's checkpoint keeps a stages-1..3 encoder (no fc) under ``net_t.`` beside other networks."""
    model = torch_resnet("resnet18", num_stages=3, seed=2)
    state = {f"net_t.{k}": v.numpy() for k, v in model.state_dict().items()}
    state.update({f"net_s.{k}": v.numpy() for k, v in resnet18[0].items()})
    config, variables = convert_resnet(state, "resnet18", out_stages=(1, 2, 3), prefix="net_t.")
    assert not any(name.startswith("layer4") for name in variables["params"])
    assert_same_features(model, config, variables)
    # Without the prefix the keys say what the checkpoint is: the error names both ways to convert it.
    with pytest.raises(ConversionError, match=r"the checkpoint is an official MambaAD one \(its encoder under "
                                              r"'net_t\.'\): from_torch\('mambaad', path\) .* from_torch\("
                                              r"'resnet18', path, prefix='net_t\.', out_stages=\(1, 2, 3\)\)"):
        convert_resnet(state, "resnet18", out_stages=(1, 2, 3))


def test_full_state_dict_into_shorter_encoder(resnet18):
    """Stages that are not built are skipped: a full torchvision state dict converts into a (1, 2, 3) encoder."""
    state = {k: v.numpy() for k, v in resnet18[0].items()}
    config, variables = convert_resnet(state, "resnet18", out_stages=(1, 2, 3))
    assert not any(name.startswith("layer4") for name in variables["params"])
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                  state["conv1.weight"].transpose(2, 3, 1, 0))


def test_conversion_errors_name_every_key(resnet18):
    state = dict(resnet18[0])
    del state["layer1.0.bn1.running_var"]
    state["layer1.0.extra.weight"] = torch.zeros(3)
    state["layer1.7.conv1.weight"] = torch.zeros(64, 64, 3, 3)  # a rule matches, but there is no such block
    state["layer2.0.conv1.weight"] = torch.zeros(128, 32, 3, 3)
    with pytest.raises(ConversionError) as info:
        from_torch("resnet18", state)
    message = str(info.value)
    assert info.value.missing == ["batch_stats/layer1_0/bn1/var"]
    assert "batch_stats/layer1_0/bn1/var (torch key layer1.0.bn1.running_var)" in message
    assert "layer1.0.extra.weight" in message and "layer1.7.conv1.weight" in message
    assert "layer2.0.conv1.weight: (128, 32, 3, 3) -> (3, 3, 32, 128), expected (3, 3, 64, 128)" in message


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_every_flax_leaf_names_the_torch_key_that_fills_it(arch):
    """Read backwards, the rules give each converted leaf exactly the torch module's own key for it."""
    state = torch_resnet(arch).state_dict()
    _, variables = from_torch(arch, state)
    paths = ["/".join(path) for path in flax.traverse_util.flatten_dict(variables)]
    keys = [torch_key_for(path, RESNET_RULES) for path in paths]
    assert sorted(keys, key=str) == sorted(k for k in state if not any(re.fullmatch(p, k) for p in RESNET_IGNORE))


@pytest.mark.parametrize("edit, name", [
    (lambda state: state.pop("layer3.1.conv2.weight"), "params/layer3_1/conv2/kernel"),  # missing: the Flax leaf
    (lambda state: state.update({"head.weight": torch.zeros(10, 512)}), "head.weight"),
    (lambda state: state.update({"bn1.running_mean": torch.zeros(32)}), "bn1.running_mean"),
], ids=["missing", "extra", "shape"])
def test_each_problem_alone_raises(resnet18, edit, name):
    state = dict(resnet18[0])
    edit(state)
    with pytest.raises(ConversionError, match=name):
        from_torch("resnet18", state)


@pytest.mark.parametrize("held, stages, arch, says", [
    ("resnet50", 2, "resnet34", "a resnet50 (bottleneck blocks, 3-4), not a resnet34"),
    ("resnet18", 4, "resnet34", "a resnet18 (basic blocks, 2-2-2-2), not a resnet34"),
    ("wide_resnet50_2", 1, "resnet50", "a wide_resnet50_2 (bottleneck blocks, 3, width 128), not a resnet50"),
])
def test_a_checkpoint_of_another_resnet_says_which_it_holds(held, stages, arch, says):
    with pytest.raises(ConversionError) as info:
        from_torch(arch, torch_resnet(held, stages).state_dict())
    assert str(info.value).startswith(f"the checkpoint holds {says}; its state dict does not match")


def test_a_resnet_of_no_known_arch_is_described():
    depths, bottleneck = (3, 4, 23, 3), np.zeros((64, 64, 1, 1), np.float32)  # ResNet-101's blocks
    state = {f"layer{stage}.{block}.conv{conv}.weight": bottleneck for stage, count in enumerate(depths, start=1)
             for block in range(count) for conv in (1, 2, 3)}
    with pytest.raises(ConversionError, match=r"^the checkpoint holds a ResNet of bottleneck blocks, 3-4-23-3 \(none "
                                              r"of resnet18, resnet34, resnet50, wide_resnet50_2\), not a resnet50;"):
        from_torch("resnet50", state)


def test_a_cut_backbone_converts_with_its_stages_and_is_named_without_them():
    """A timm ``features_only`` backbone cut after layer3: from_torch with out_stages (1, 2, 3) gives the full
    network's first three stages; without them the error says where the file stops and what to pass."""
    full = torch_resnet("resnet34").state_dict()
    cut = {key: value for key, value in full.items() if not key.startswith(("layer4.", "fc."))}
    config, variables = from_torch("resnet34", cut, out_stages=(1, 2, 3))
    assert tuple(config.out_stages) == (1, 2, 3)
    full_variables = from_torch("resnet34", full)[1]
    for collection, tree in variables.items():
        assert_same_variables(tree, {k: v for k, v in full_variables[collection].items() if k in tree})
    with pytest.raises(ConversionError, match=r"^the checkpoint stops at layer3 \(a cut backbone\): convert it with "
                                              r"out_stages=\(1, 2, 3\), e.g. from_torch\('resnet34', path, "):
        from_torch("resnet34", cut)


def test_encoder_weights_of_another_resnet_say_which_it_holds(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torch_resnet("resnet18", 2).state_dict(), path)
    with pytest.raises(ValueError, match=r"resnet18.pth' does not hold the resnet34 stages 1-2 that this encoder "
                                         r"needs: the checkpoint holds a resnet18 \(basic blocks, 2-2\)"):
        read_encoder_weights("resnet34", str(path), last_stage=2)


def test_long_problem_lists_are_cut():
    with pytest.raises(ConversionError, match=r"\.\.\. \d+ more") as info:
        from_torch("resnet18", {})
    assert len(info.value.missing) > 20 and f"{len(info.value.missing)} missing" in str(info.value)


def test_bad_paths_and_kinds(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        from_torch("resnet18", missing)
    truncated = tmp_path / "truncated.pth"
    torch.save({"w": torch.ones(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated.pth"):
        from_torch("resnet18", truncated)
    with pytest.raises(ValueError, match="wide_resnet50_2"):
        from_torch("resnet101", {})


def test_classifier_backbone_from_a_checkpoint_gives_torch_logits(tmp_path):
    """``config.model.encoder_weights`` puts a torchvision checkpoint into the ResNet classifier's backbone (its 1000-
    class ``fc`` stays out: the head starts fresh); with torch's ``fc`` copied into the head as well, the classifier's
    logits are torch's ``fc(mean-pooled layer4)``."""
    model = torch_resnet("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    classifier = build_resnet_classifier(resnet_model_config(10, arch="resnet18"))
    state = classification.create_state(classifier, optax.sgd(0.0), jax.random.PRNGKey(0), 64, make_mesh(),
                                        encoder_weights=str(path))
    fc = {"kernel": model.fc.weight.detach().numpy().T, "bias": model.fc.bias.detach().numpy()}
    assert not np.allclose(np.asarray(state.params["head"]["kernel"]), fc["kernel"])
    images = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = model.fc(model(torch.from_numpy(images))[-1].mean(dim=(2, 3))).numpy()
    variables = {"params": {**state.params, "head": fc}, **state.model_state}
    logits = jax.jit(classifier.apply)(variables, jnp.asarray(images.transpose(0, 2, 3, 1)))["logits"]
    error, scale = float(np.abs(np.asarray(logits) - expected).max()), float(np.abs(expected).max())
    assert error <= RTOL * scale, f"max error {error} > {RTOL} * {scale}"
