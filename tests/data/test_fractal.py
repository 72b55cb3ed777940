"""The fractal pretraining set: systems within their sigma-factor and contraction bounds, attractors where the maps
put them, images drawn as documented, every example a function of its keys, bad options named."""

import numpy as np
import pytest

from ssm_jax.data import fractal, get_source


def _singular_values(linear):
    """Closed form for 2 x 2 matrices (independent of the module's SVD): s^2 = (F^2 +- sqrt(F^4 - 4 det^2)) / 2."""
    frob2 = np.sum(linear ** 2, axis=(1, 2))
    det = np.linalg.det(linear)
    root = np.sqrt(np.maximum(frob2 ** 2 - 4 * det ** 2, 0))
    return np.sqrt((frob2 + root) / 2), np.sqrt(np.maximum(frob2 - root, 0) / 2)


def test_systems_keep_their_sigma_factor_and_contract():
    for seed in range(200):
        maps = fractal.sample_system(np.random.default_rng(seed))
        n = len(maps)
        assert maps.shape == (n, 2, 3) and fractal.MAPS[0] <= n <= fractal.MAPS[1]
        s1, s2 = _singular_values(maps[:, :, :2])
        assert (5 + n) / 2 - 1e-9 <= np.sum(s1 + 2 * s2) <= (6 + n) / 2 + 1e-9
        assert s1.max() <= fractal.MAX_GAIN + 1e-9 and np.all(np.abs(maps[:, :, 2]) <= 1)


def test_perturbation_is_bounded_and_keeps_contraction():
    rng = np.random.default_rng(0)
    maps = fractal.sample_system(rng)
    for _ in range(100):
        moved = fractal.perturb(maps, rng, 0.05)
        s1, _ = _singular_values(moved[:, :, :2])
        assert s1.max() <= fractal.MAX_GAIN + 1e-9
        np.testing.assert_array_less(np.abs(moved[:, :, 2] - maps[:, :, 2]), 0.025 + 1e-12)  # shifts never scaled
    stretched = np.array([[[0.9, 0.0, 0.0], [0.0, 0.5, 0.0]]])  # gain 0.9 + up to 0.025: scaled back to MAX_GAIN
    for _ in range(20):
        assert _singular_values(fractal.perturb(stretched, rng, 0.05)[:, :, :2])[0].max() <= fractal.MAX_GAIN + 1e-9


def test_chaos_game_draws_the_sierpinski_triangle():
    """Maps v -> v / 2 + corner / 2 for corners (0, 0), (1, 0), (0, 1): after the burn-in every point is within
    2^-12 of the attractor, so none lies inside the removed middle triangle, and each corner's copy holds a third."""
    corners = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    maps = np.concatenate([np.broadcast_to(0.5 * np.eye(2), (3, 2, 2)), corners[:, :, None] / 2], axis=2)
    x, y = fractal.attractor(maps, np.random.default_rng(0), steps=64)
    assert x.shape == (64 * fractal.CHAINS,)
    margin = 2.0 ** -11
    assert np.all((x >= -margin) & (y >= -margin) & (x + y <= 1 + margin))
    assert not np.any((x < 0.5 - margin) & (y < 0.5 - margin) & (x + y > 0.5 + margin))
    shares = [np.mean((x < 0.5) & (y < 0.5)), np.mean(x >= 0.5), np.mean(y >= 0.5)]
    np.testing.assert_allclose(shares, 1 / 3, atol=0.02)


def test_drawing_places_the_points_within_the_image():
    rng = np.random.default_rng(1)
    points = rng.uniform(-3, 5, (2, 5000))
    for size in (32, 97):
        image = fractal.draw(points, size, rng)
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        assert np.array_equal(image[..., 0], image[..., 2])
        grey = image[..., 0].astype(int)
        background = np.bincount(grey.ravel()).argmax()  # most pixels hold no point
        rows, cols = np.nonzero(grey != background)
        extent = max(rows.max() - rows.min(), cols.max() - cols.min())
        assert 0.5 * (size - 1) - 1 <= extent <= 0.95 * (size - 1) + 1


def test_examples_are_functions_of_their_keys():
    train = get_source("fractal", None, "train", num_classes=3, per_class_train=2, per_class_test=1, seed=4)
    test = get_source("fractal", None, "test", num_classes=3, per_class_train=2, per_class_test=1, seed=4)
    assert len(train) == 6 and len(test) == 3 and list(train.class_names) == ["ifs_0000", "ifs_0001", "ifs_0002"]
    assert [r.label for r in train.records] == [0, 0, 1, 1, 2, 2] and train.task == "classification"
    again = fractal.fractal_source(None, "train", num_classes=3, per_class_train=2, per_class_test=1, seed=4)
    first = train.load(train[0], 48)
    assert first["label"] == 0 and first["image"].shape == (48, 48, 3)
    np.testing.assert_array_equal(first["image"], again.load(again[0], 48)["image"])
    others = [train.load(train[1], 48)["image"], test.load(test[0], 48)["image"],
              fractal.fractal_source(None, "train", num_classes=3, seed=5).load(train[0], 48)["image"]]
    assert all(not np.array_equal(first["image"], other) for other in others)
    np.testing.assert_array_equal(train.system(1), again.system(1))
    assert not np.array_equal(train.system(0), train.system(1))


@pytest.mark.parametrize("options, message", [
    ({"num_classes": 1}, "num_classes=1 \\(expected >= 2\\)"),
    ({"per_class_train": 0}, "per_class_train=0 and per_class_test=2 \\(expected >= 1\\)"),
    ({"perturbation": 1.5}, "perturbation=1.5; expected a width in \\[0, 1\\)"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        fractal.fractal_source(None, "train", **options)
    with pytest.raises(ValueError, match="split 'val'"):
        fractal.fractal_source(None, "val")
