"""PatchEmbed / PatchMerging shapes and the 2x2 concatenation order; the convolutional stem and downsampling
against PyTorch; DropPath."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ssm_jax.nn import ConvDownsample, ConvStem, DropPath, PatchEmbed, PatchMerging

KEY = jax.random.key(0, impl="rbg")


def _shapes(module, x):
    variables = jax.eval_shape(module.init, KEY, x)
    return jax.eval_shape(module.apply, variables, x).shape, jax.tree.map(lambda a: a.shape, variables["params"])


def test_shapes():
    y, p = _shapes(PatchEmbed(8, patch_size=4), jnp.ones((2, 16, 12, 3)))
    assert y == (2, 4, 3, 8) and p["proj"]["kernel"] == (4, 4, 3, 8) and "norm" in p
    y, p = _shapes(PatchMerging(), jnp.ones((2, 4, 4, 2)))
    assert y == (2, 2, 2, 4) and p["reduction"]["kernel"] == (8, 4)
    assert _shapes(PatchMerging(out_dim=6), jnp.ones((2, 5, 7, 2)))[0] == (2, 3, 4, 6)  # odd sizes padded


def test_patch_embed_refuses_sides_it_would_crop():
    """A strided conv drops what is left over: 30 px in 4 x 4 patches would lose two rows and columns unseen."""
    with pytest.raises(ValueError, match=r"image sides 30x32 are not multiples of the patch size 4"):
        _shapes(PatchEmbed(8, patch_size=4), jnp.ones((1, 30, 32, 3)))


def test_patch_merging_concatenation_order():
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 2)).astype(np.float32)
    v = {"params": {"norm": {"scale": jnp.ones(8), "bias": jnp.zeros(8)}, "reduction": {"kernel": jnp.eye(8)}}}
    y = jax.jit(PatchMerging(out_dim=8).apply)(v, x)
    cell = np.concatenate([x[0, 0, 0], x[0, 1, 0], x[0, 0, 1], x[0, 1, 1]])  # (0,0), (1,0), (0,1), (1,1) as Swin
    np.testing.assert_allclose(y[0, 0, 0], (cell - cell.mean()) / np.sqrt(cell.var() + 1e-6), rtol=1e-4, atol=1e-5)


def test_drop_path():
    x = jnp.ones((64, 3))
    m = DropPath(0.5)
    assert m.apply({}, x, deterministic=True) is x
    y = jax.jit(lambda x: m.apply({}, x, deterministic=False, rngs={"dropout": KEY}))(x)
    assert set(np.unique(np.asarray(y))) <= {0.0, 2.0} and 0 < int((y[:, 0] == 0).sum()) < 64


def test_conv_stem_and_downsample_shapes():
    y, p = _shapes(ConvStem(8), jnp.ones((2, 17, 12, 3)))
    assert y == (2, 5, 3, 8) and p["conv1"]["kernel"] == (3, 3, 3, 4) and p["conv2"]["kernel"] == (3, 3, 4, 8)
    y, p = _shapes(ConvDownsample(6), jnp.ones((2, 5, 7, 4)))
    assert y == (2, 3, 4, 6) and p["conv"]["kernel"] == (3, 3, 4, 6) and "norm" in p


def test_conv_stem_and_downsample_match_torch():
    """Against the same layers in PyTorch (VMamba v2's stem and v3 downsampling: Conv2d k3 s2 p1, LayerNorm,
    exact GELU) with the weights copied (OIHW -> HWIO), float32, on odd and even sizes."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 19, 16)).astype(np.float32)  # NCHW

    def conv(c_in, c_out):
        layer = torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(rng.standard_normal(layer.weight.shape).astype(np.float32) * 0.3))
            layer.bias.copy_(torch.from_numpy(rng.standard_normal(layer.bias.shape).astype(np.float32)))
        return layer

    def norm(c):
        layer = torch.nn.LayerNorm(c, eps=1e-6)  # flax's default epsilon
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(1 + 0.1 * rng.standard_normal(c).astype(np.float32)))
            layer.bias.copy_(torch.from_numpy(0.1 * rng.standard_normal(c).astype(np.float32)))
        return layer

    def flax_conv(layer):
        return {"kernel": jnp.asarray(layer.weight.detach().numpy().transpose(2, 3, 1, 0)),
                "bias": jnp.asarray(layer.bias.detach().numpy())}

    def flax_norm(layer):
        return {"scale": jnp.asarray(layer.weight.detach().numpy()), "bias": jnp.asarray(layer.bias.detach().numpy())}

    c1, n1, c2, n2, c3, n3 = conv(3, 4), norm(4), conv(4, 8), norm(8), conv(8, 6), norm(6)
    with torch.no_grad():
        t = torch.from_numpy(x)
        t = n1(c1(t).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        t = n2(c2(torch.nn.functional.gelu(t)).permute(0, 2, 3, 1))
        stem_ref = t.numpy()
        down_ref = n3(c3(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)).numpy()
    stem = {"conv1": flax_conv(c1), "norm1": flax_norm(n1), "conv2": flax_conv(c2), "norm2": flax_norm(n2)}
    got = ConvStem(8).apply({"params": stem}, jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got, stem_ref, rtol=1e-4, atol=1e-4)
    down = ConvDownsample(6).apply({"params": {"conv": flax_conv(c3), "norm": flax_norm(n3)}}, got)
    np.testing.assert_allclose(down, down_ref, rtol=1e-4, atol=1e-4)
