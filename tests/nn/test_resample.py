"""Bilinear align-corners upsampling vs torch, Gaussian blur vs scipy.ndimage (float32, 1e-5 relative)."""

import jax
import numpy as np
import pytest
from scipy import ndimage

from ssm_jax.nn.resample import gaussian_blur, upsample_bilinear_align_corners

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.mark.parametrize(
    "shape,size", [((2, 8, 8), 64), ((1, 7, 5), (33, 20)), ((3, 16, 16, 4), 256), ((1, 1, 3), (4, 9)), ((2, 9, 9), 4)]
)
def test_upsample_matches_torch(shape, size):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = jax.jit(upsample_bilinear_align_corners, static_argnums=1)(x, size)
    t = torch.from_numpy(x if x.ndim == 4 else x[..., None]).permute(0, 3, 1, 2)
    ref = F.interpolate(t, size=size, mode="bilinear", align_corners=True).permute(0, 2, 3, 1).numpy()
    ref = ref if x.ndim == 4 else ref[..., 0]
    assert y.shape == ref.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_upsample_same_size_is_identity():
    x = np.random.default_rng(1).standard_normal((2, 6, 5)).astype(np.float32)
    np.testing.assert_array_equal(upsample_bilinear_align_corners(x, (6, 5)), x)


@pytest.mark.parametrize("shape,sigma", [((2, 32, 32), 4.0), ((1, 20, 13), 1.5), ((2, 5, 6), 4.0), ((1, 9, 9), 0.7)])
def test_gaussian_blur_matches_scipy(shape, sigma):
    maps = np.random.default_rng(2).random(shape).astype(np.float32)
    y = jax.jit(gaussian_blur, static_argnums=1)(maps, sigma)
    ref = np.stack([ndimage.gaussian_filter(m, sigma, truncate=4.0, mode="reflect") for m in maps])
    assert y.shape == ref.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-7)  # (2, 5, 6) at sigma 4: radius 16 > size


def test_gaussian_blur_truncate_and_zero_sigma():
    maps = np.random.default_rng(3).random((1, 24, 24)).astype(np.float32)
    ref = ndimage.gaussian_filter(maps[0], 2.0, truncate=2.0)
    np.testing.assert_allclose(gaussian_blur(maps, 2.0, truncate=2.0)[0], ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(gaussian_blur(maps, 0.0), maps)
