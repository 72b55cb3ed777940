"""The generic conversion machinery on tiny hand-made state dicts: rules, transforms, checks, loading."""

import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from flax.core import freeze

from ssm_jax.convert import TRANSFORMS, ConversionError, Rule, convert_state_dict, load_state_dict
from ssm_jax.convert.common import _safetensors_load, torch_key_for

TEMPLATE = freeze({
    "params": {"blocks_0": {"proj": {"kernel": jax.ShapeDtypeStruct((3, 2), np.float32)},
                            "conv": {"kernel": jax.ShapeDtypeStruct((5, 4, 6), np.float32)}}},
    "state": {"step": jax.ShapeDtypeStruct((), np.int32)},
})
RULES = [Rule(r"blocks\.(\d+)\.(proj)\.weight", "params/blocks_{1}/{2}/kernel", "linear"),
         Rule(r"blocks\.(?P<i>\d+)\.conv\.weight", "params/blocks_{i}/conv/kernel", "conv"),
         Rule(r".*\.weight", "params/unused/kernel"),  # never reached for the keys above: the first match wins
         Rule(r"step", "state/step")]


def _state():
    rng = np.random.default_rng(0)
    return {"blocks.0.proj.weight": rng.standard_normal((2, 3)), "blocks.0.conv.weight": rng.standard_normal((6, 4, 5)),
            "step": np.array(7, np.int64), "blocks.0.counter": np.zeros(())}


def test_rules_transforms_and_dtypes():
    state = _state()
    out = convert_state_dict(state, RULES, TEMPLATE, ignore=[r".*counter"])
    np.testing.assert_allclose(out["params"]["blocks_0"]["proj"]["kernel"], state["blocks.0.proj.weight"].T)
    np.testing.assert_allclose(out["params"]["blocks_0"]["conv"]["kernel"],
                               state["blocks.0.conv.weight"].transpose(2, 1, 0))
    assert out["params"]["blocks_0"]["proj"]["kernel"].dtype == np.float32
    assert out["state"]["step"].dtype == np.int32 and out["state"]["step"] == 7
    assert type(out) is dict


def test_transforms():
    w = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(TRANSFORMS["conv"](w)[1, 2, 0, 1], w[1, 0, 1, 2])  # OIHW -> HWIO
    assert TRANSFORMS["linear"](np.zeros((2, 3))).shape == (3, 2)
    with pytest.raises(ValueError, match="2-D"):
        TRANSFORMS["linear"](np.zeros(3))


def test_every_problem_in_one_error():
    state = _state()
    del state["step"]
    state["blocks.0.proj.weight"] = np.zeros((3, 3))
    state["blocks.0.conv.weight"] = np.zeros(6)  # the transform itself fails: reported, not raised
    state["head.bias"] = np.zeros(2)
    with pytest.raises(ConversionError) as info:
        convert_state_dict(state, RULES, TEMPLATE)
    message = str(info.value)
    assert info.value.missing == ["state/step"]
    assert info.value.unexpected == ["blocks.0.counter", "head.bias"]
    assert "blocks.0.proj.weight: (3, 3) -> (3, 3), expected (3, 2)" in message
    assert "blocks.0.conv.weight: (6,) -> conv failed" in message


def test_missing_leaves_name_the_torch_key_that_would_fill_them():
    state = _state()
    del state["blocks.0.conv.weight"], state["step"]
    with pytest.raises(ConversionError) as info:
        convert_state_dict(state, RULES, TEMPLATE, ignore=[r".*counter"])
    assert info.value.missing == ["params/blocks_0/conv/kernel", "state/step"]
    assert info.value.expected_keys == {"params/blocks_0/conv/kernel": "blocks.0.conv.weight", "state/step": "step"}
    assert "params/blocks_0/conv/kernel (torch key blocks.0.conv.weight)" in str(info.value)
    assert info.value.of("a.pth").expected_keys == info.value.expected_keys  # kept when the file is named


@pytest.mark.parametrize("rule, path, key", [
    (Rule(r"layer(\d)\.(\d+)\.bn(\d)\.running_var", "batch_stats/layer{1}_{2}/bn{3}/var"),
     "batch_stats/layer2_10/bn3/var", "layer2.10.bn3.running_var"),
    (Rule(r"(in|out)_proj\.weight", "params/{1}/kernel"), "params/out/kernel", "out_proj.weight"),  # an alternation
    (Rule(r"conv(\d)\1\.weight", "params/dw{1}/kernel"), "params/dw7/kernel", "conv77.weight"),  # a backreference
    (Rule(r"b\.(?P<i>\d)\.c(?P=i)", "params/b{1}"), "params/b4", "b.4.c4"),  # a named one, its field by number
    (Rule(r"((a)|b)x\.(\d)", "p/{1}/{3}"), "p/a/2", "ax.2"),  # groups inside a group are counted
    (Rule(r"conv(\d)\d\.weight", "params/dw{1}/kernel"), "params/dw7/kernel", None),  # which second digit?
    (Rule(r"(?:net\.)?head\.weight", "params/head/kernel"), "params/head/kernel", None),  # optional: which?
    (Rule(r"x\.(\d+)", "params/y{1}"), "params/z3", None),  # the rule cannot write this path
    (Rule(r"x\.(\d+)", "params/y{1}"), "params/yq", None),  # the pattern refuses what the path would give
])
def test_torch_key_for_reads_a_rule_backwards(rule, path, key):
    assert torch_key_for(path, [rule]) == key


def test_target_outside_the_template_and_duplicates():
    rules = [Rule(r"a", "params/x"), Rule(r"b", "params/x"), Rule(r"c", "params/y")]
    template = {"params": {"x": jax.ShapeDtypeStruct((1,), np.float32)}}
    with pytest.raises(ConversionError) as info:
        convert_state_dict({"a": np.zeros(1), "b": np.zeros(1), "c": np.zeros(1)}, rules, template)
    assert info.value.duplicated == ["params/x: a, b"]
    assert info.value.unexpected == ["c -> params/y (no such Flax leaf)"]


def test_long_lists_are_cut():
    with pytest.raises(ConversionError) as info:
        convert_state_dict({f"k{i}": np.zeros(1) for i in range(25)}, [], {})
    message = str(info.value)
    assert "25 unexpected" in message and "k19" in message and "k20" not in message and "... 5 more" in message


def test_unknown_transform():
    with pytest.raises(ValueError, match="identity"):
        convert_state_dict({}, [Rule("a", "params/a", "transpose")], {})


def test_load_npz_wrapped_and_prefixed(tmp_path):
    path = tmp_path / "weights.npz"
    np.savez(path, **{"module.w": np.ones(2, np.float64), "module.n": np.arange(3)})
    assert set(load_state_dict(path)) == {"w", "n"}
    assert load_state_dict({"model": {"state_dict": {"module.w": np.ones(2)}}, "epoch": 1}).keys() == {"w"}


def test_safetensors_and_renamed_files_load_by_their_contents(tmp_path):
    """safetensors (written by Hugging Face's own library) with float16, bfloat16 and integer tensors, also when
    named .pth; an .npz named .pth; a safetensors file cut short is named."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((3, 4)).astype(np.float16), "n": np.arange(5, dtype=np.int64),
               "b": rng.standard_normal(6).astype(np.float32).astype(ml_dtypes.bfloat16)}
    for name in ("weights.safetensors", "weights.pth"):
        save_file(weights, str(tmp_path / name))
        loaded = load_state_dict(tmp_path / name)
        assert {k: v.dtype for k, v in loaded.items()} == {"w": np.float32, "n": np.int64, "b": np.float32}
        for key, value in weights.items():
            np.testing.assert_array_equal(loaded[key], value.astype(loaded[key].dtype))
    with open(tmp_path / "arrays.pth", "wb") as f:
        np.savez(f, w=np.ones(2))
    assert load_state_dict(tmp_path / "arrays.pth")["w"].tolist() == [1.0, 1.0]
    data = (tmp_path / "weights.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-4])
    with pytest.raises(ValueError, match=r"cut.safetensors as safetensors \(truncated or corrupt\?\): tensor"):
        load_state_dict(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("legacy", [False, True])
def test_a_renamed_torch_checkpoint_loads_by_its_contents(tmp_path, legacy):
    """torch.save's zip archive, or its legacy pickle, named .safetensors or .npz reads as the .pth it is: the
    suffix is not trusted."""
    torch = pytest.importorskip("torch")
    state = {"conv.weight": torch.randn(2, 3, 3, 3), "bn.num_batches_tracked": torch.tensor(7)}
    original = tmp_path / "weights.pth"
    torch.save(state, original, _use_new_zipfile_serialization=not legacy)
    expected = load_state_dict(original)
    for name in ("renamed.safetensors", "renamed.npz"):
        (tmp_path / name).write_bytes(original.read_bytes())
        loaded = load_state_dict(tmp_path / name)
        assert {k: v.dtype for k, v in loaded.items()} == {k: v.dtype for k, v in expected.items()}
        for key, value in expected.items():
            np.testing.assert_array_equal(loaded[key], value)


def test_a_file_of_no_known_format_is_named(tmp_path):
    """Random bytes named .safetensors: the file, its size and the formats expected, not a huge allocation; the
    safetensors reader itself refuses a header length the file cannot hold."""
    path = tmp_path / "noise.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match=r"noise.safetensors is not a PyTorch checkpoint \(it starts with b'.*'; "
                                         r"1000 bytes\), nor .*: expected torch.save's zip archive .* or an .npz"):
        load_state_dict(path)
    with pytest.raises(ValueError, match=r"cannot read \S*noise.safetensors as safetensors: its first 8 bytes give a "
                                         r"header length of \d+, more than its 1000 bytes hold"):
        _safetensors_load(path)


def test_a_key_with_and_without_ddp_prefix_is_refused():
    with pytest.raises(ValueError, match=r"keys 'conv.weight' and 'module.conv.weight' both stand for 'conv.weight'"):
        load_state_dict({"conv.weight": np.ones(2), "module.conv.weight": np.zeros(2)})


def test_an_ema_copy_beside_the_weights_is_said(tmp_path):
    with pytest.warns(UserWarning, match=r"also holds an averaged \(EMA\) copy of the weights under "
                                         r"'state_dict_ema', not loaded"):
        loaded = load_state_dict({"state_dict": {"w": np.ones(2)}, "state_dict_ema": {"w": np.zeros(2)}})
    assert loaded["w"].tolist() == [1.0, 1.0]


def test_a_home_relative_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    np.savez(tmp_path / "w.npz", w=np.ones(2))
    assert set(load_state_dict("~/w.npz")) == {"w"}


def test_a_model_under_one_prefix_is_pointed_out():
    state = {"backbone." + key: value for key, value in _state().items()}
    with pytest.raises(ConversionError, match=r"every unexpected key starts with 'backbone.': if the model sits "
                                              r"under that name"):
        convert_state_dict(state, RULES, TEMPLATE)


def test_corrupt_and_missing_files(tmp_path):
    corrupt = tmp_path / "broken.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="broken.npz"):
        load_state_dict(corrupt)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_state_dict(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="'name'"):
        load_state_dict({"name": "resnet"})


def test_missing_torch_is_named(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"\x80\x02anything")  # a pickle's start, as torch.save's legacy format writes
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[torch\]"'):
        load_state_dict(path)
