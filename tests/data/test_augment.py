"""Training augmentations: label-preserving geometric transforms of image and mask, deterministic given the rng."""

import numpy as np
import pytest

from ssm_jax.data import augment
from ssm_jax.data.augment import RandomAffine, RandomRot90, check_affine, warp_affine


def _example(size=9, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size, 1), np.float32)
    mask[1:4, 2:7] = 1.0  # asymmetric, so every rotation and flip of it differs
    return {"image": rng.standard_normal((size, size, 3)).astype(np.float32), "mask": mask,
            "label": np.int32(2), "index": np.int64(7)}


def test_zero_affine_is_the_identity():
    ex = _example()
    np.testing.assert_array_equal(warp_affine(ex["image"], 0.0, 1.0, (0.0, 0.0)), ex["image"])
    out = RandomAffine(0.0, 0.0, 0.0)(ex, np.random.default_rng(3))
    for key in ex:
        np.testing.assert_array_equal(out[key], ex[key], err_msg=key)
        assert out[key].dtype == ex[key].dtype, key


@pytest.mark.parametrize("degrees, k", [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_affine_rotation_by_right_angles_is_rot90(degrees, k):
    image = _example()["image"]
    np.testing.assert_allclose(warp_affine(image, degrees, 1.0, (0.0, 0.0)), np.rot90(image, k), atol=1e-5)
    np.testing.assert_array_equal(warp_affine(image, degrees, 1.0, (0.0, 0.0), nearest=True), np.rot90(image, k))


def test_affine_shift_moves_pixels_and_repeats_the_edge():
    image = _example()["image"]
    rows = np.clip(np.arange(9) - 2, 0, 8)  # shifted down 2 rows and left 1 column
    cols = np.clip(np.arange(9) + 1, 0, 8)
    np.testing.assert_allclose(warp_affine(image, 0.0, 1.0, (2.0, -1.0)), image[rows][:, cols], atol=1e-6)


def test_affine_scale_is_about_the_centre():
    image = np.zeros((9, 9, 1), np.float32)
    image[4, 4] = 1.0
    image[4, 6] = 2.0  # 2 px right of the centre -> 4 px at scale 2
    out = warp_affine(image, 0.0, 2.0, (0.0, 0.0), nearest=True)
    assert (out[4, 4, 0], out[4, 6, 0], out[4, 8, 0]) == (1.0, 0.0, 2.0)


def _reference_bilinear(image, degrees, scale, shift):
    """float64 NumPy: each output pixel o reads c + R(theta)^-1 (o - c - shift) / scale, clamped to the image, and
    interpolates its four neighbours (the last row and column their own neighbours)."""
    h, w, _ = image.shape
    theta = np.radians(degrees)
    inverse = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]]) / scale
    r, c = np.meshgrid(np.arange(h) - (h - 1) / 2 - shift[0], np.arange(w) - (w - 1) / 2 - shift[1], indexing="ij")
    y = np.clip(inverse[0, 0] * r + inverse[0, 1] * c + (h - 1) / 2, 0, h - 1)
    x = np.clip(inverse[1, 0] * r + inverse[1, 1] * c + (w - 1) / 2, 0, w - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (y - y0)[..., None], (x - x0)[..., None]
    px = image.astype(np.float64)
    top = px[y0, x0] * (1 - fx) + px[y0, x1] * fx
    bottom = px[y1, x0] * (1 - fx) + px[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize("shape", [(24, 24, 3), (17, 13, 1), (9, 30, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_bilinear_affine_matches_a_float64_reference(shape, dtype):
    """Random rotations (any angle), scales and shifts, so the edge padding is exercised in every direction."""
    rng = np.random.default_rng(sum(shape))
    for _ in range(8):
        image = (rng.integers(0, 256, shape) if dtype == np.uint8 else rng.standard_normal(shape)).astype(dtype)
        args = (rng.uniform(-180, 180), rng.uniform(0.5, 1.5), tuple(rng.uniform(-8, 8, 2)))
        out = warp_affine(image, *args)
        assert out.shape == shape and out.dtype == np.float32
        tolerance = 1e-4 * (255 if dtype == np.uint8 else 1)  # float32 resampling against float64
        np.testing.assert_allclose(out, _reference_bilinear(image, *args), atol=tolerance)


def test_bilinear_affine_warps_a_grayscale_image_once_with_the_same_values(monkeypatch):
    gray = np.random.default_rng(0).integers(0, 256, (20, 20, 1), dtype=np.uint8)
    single = warp_affine(gray, 7.0, 1.1, (1.5, -2.0))
    planes, real = [], augment._bilinear_plane
    monkeypatch.setattr(augment, "_bilinear_plane", lambda plane, *a: planes.append(plane) or real(plane, *a))
    out = warp_affine(np.repeat(gray, 3, axis=2), 7.0, 1.1, (1.5, -2.0))
    np.testing.assert_array_equal(out, np.repeat(single, 3, axis=2))
    assert len(planes) == 1
    colour = np.concatenate([gray, gray, 255 - gray], axis=2)
    warp_affine(colour, 7.0, 1.1, (1.5, -2.0))
    assert len(planes) == 4  # channels that differ are warped one by one


def test_random_affine_keeps_shapes_dtypes_label_and_binary_mask():
    ex = _example(size=16)
    transform = RandomAffine(10.0, 0.1, 0.1)
    out = transform(ex, np.random.default_rng(5))
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {k: (v.shape, v.dtype) for k, v in ex.items()}
    assert out["label"] == ex["label"] and out["index"] == ex["index"]
    assert set(np.unique(out["mask"])) <= {0.0, 1.0} and out["mask"].sum() > 0
    assert not np.array_equal(out["image"], ex["image"])
    again = transform(ex, np.random.default_rng(5))
    other = transform(ex, np.random.default_rng(6))
    assert all(np.array_equal(again[k], out[k]) for k in ex)  # same rng, same warp
    assert not np.array_equal(other["image"], out["image"])


def test_random_rot90_rotates_image_and_mask_together():
    ex = _example()
    seen = set()
    for seed in range(32):
        out = RandomRot90()(ex, np.random.default_rng(seed))
        k = next(k for k in range(4) if np.array_equal(out["image"], np.rot90(ex["image"], k)))
        np.testing.assert_array_equal(out["mask"], np.rot90(ex["mask"], k))
        assert out["label"] == ex["label"] and out["image"].dtype == np.float32
        seen.add(k)
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize("affine", [(1.0, 0.1), (-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.5),
                                    (200.0, 0.0, 0.0), ("a", 0, 0), 3.0, (float("nan"), 0, 0)])
def test_bad_affine_is_named(affine):
    with pytest.raises(ValueError, match=r"affine=.*max_degrees"):
        check_affine(affine)
