"""Training augmentations: label-preserving geometric transforms of image and mask, deterministic given the rng."""

import numpy as np
import pytest

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
