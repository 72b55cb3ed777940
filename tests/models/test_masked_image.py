"""Masked-image pretraining model (SimMIM on MemoryMamba): masks, the masked-pixel loss against NumPy, the decoder's
pixel layout, and the mask token reaching the backbone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.models import build_memorymamba, memorymamba_model_config
from ssm_jax.models.masked_image import MaskedImageModel, masked_l1, random_mask, upsample_mask

KEY = jax.random.key(0, impl="rbg")
TINY = dict(depths=(1, 1), dims=(16, 32), d_state=4, coarse_size=8, fine_size=6, scan_impl="sequential")
IMAGES = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)


def _model(mask_patch=8):
    return MaskedImageModel(build_memorymamba(memorymamba_model_config(3, **TINY)), mask_patch)


def test_random_mask_hides_exactly_the_share_asked_and_differs_per_image():
    mask = np.asarray(random_mask(jax.random.PRNGKey(1), 64, (7, 7), 0.6))
    assert mask.shape == (64, 7, 7) and mask.dtype == bool
    assert np.all(mask.reshape(64, -1).sum(1) == 29)  # round(0.6 * 49)
    assert len({m.tobytes() for m in mask}) > 60


def test_upsample_and_masked_l1_match_numpy():
    rng = np.random.default_rng(2)
    mask = rng.random((3, 2, 2)) < 0.5
    mask[:, 0, 0] = True
    pixels = np.asarray(upsample_mask(jnp.asarray(mask), 4))
    assert pixels.shape == (3, 8, 8) and np.array_equal(pixels, mask.repeat(4, 1).repeat(4, 2))
    recon, images = rng.standard_normal((2, 3, 8, 8, 3))
    want = [np.abs(recon[i] - images[i])[pixels[i]].mean() for i in range(3)]
    np.testing.assert_allclose(masked_l1(jnp.asarray(recon), jnp.asarray(images), jnp.asarray(pixels)), want,
                               rtol=1e-5)


def test_outputs_the_pixels_each_feature_cell_covers():
    """The decoder's (stride, stride, 3) block at feature cell (i, j) lands on pixels [i*s:(i+1)*s, j*s:(j+1)*s]."""
    model = _model()
    variables = jax.jit(model.init)(KEY, IMAGES)
    assert "mask_token" in variables["params"]["backbone"]  # created even without a mask, for every later step
    out = jax.jit(model.apply)(variables, IMAGES)
    assert out["reconstruction"].shape == IMAGES.shape and out["pixel_mask"].shape == (2, 32, 32)
    features = jax.jit(lambda v, x: model.apply(v, x, method=lambda m, x: m.backbone(x, token_mask=jnp.zeros(
        (2, 8, 8), bool))["feature_map"]))(variables, IMAGES)
    kernel, bias = (np.asarray(variables["params"]["decoder"][k]) for k in ("kernel", "bias"))
    block = (np.asarray(features)[1, 2, 3] @ kernel + bias).reshape(8, 8, 3)
    np.testing.assert_allclose(np.asarray(out["reconstruction"])[1, 16:24, 24:32], block, rtol=1e-4, atol=1e-5)


def test_mask_token_replaces_the_hidden_patches_only():
    model = _model()
    variables = jax.jit(model.init)(KEY, IMAGES)
    mask = jnp.zeros((2, 4, 4), bool).at[0, 1, 2].set(True)
    apply = jax.jit(model.apply)
    plain, hidden = apply(variables, IMAGES), apply(variables, IMAGES, mask=mask)
    assert np.asarray(hidden["pixel_mask"]).sum() == 64 and bool(hidden["pixel_mask"][0, 8, 16])
    assert not np.allclose(plain["reconstruction"][0], hidden["reconstruction"][0])  # the scan spreads it
    np.testing.assert_allclose(plain["reconstruction"][1], hidden["reconstruction"][1], rtol=1e-5, atol=1e-6)
    # With the hidden patches' pixels changed, the output is the same: the model never sees them.
    noise = IMAGES.at[0, 8:16, 16:24].add(5.0)
    np.testing.assert_allclose(apply(variables, noise, mask=mask)["reconstruction"], hidden["reconstruction"],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_patch", [6, 24])
def test_rejects_a_mask_patch_off_the_patch_grid_or_image(mask_patch):
    with pytest.raises(ValueError, match="mask_patch"):
        _model(mask_patch).init(KEY, IMAGES)
