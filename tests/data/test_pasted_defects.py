"""On-device synthetic defects: labels, mask areas, pixels outside masks untouched, pasted content blended with the
stated opacity, determinism by key, jit, and bad arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.data.pasted_defects import paste_defects, smooth_noise

# Compiled once per shape and setting (eager dispatch of the many small ops took ~35 s a test on 2 cores).
_paste = jax.jit(paste_defects, static_argnames=("fraction", "area", "opacity", "grids"))


def _constant_batch(b=6, size=32):
    """Image i is constant i + 1 in every channel, so pasted content is recognisable by its value."""
    return jnp.broadcast_to(jnp.arange(1, b + 1, dtype=jnp.float32)[:, None, None, None], (b, size, size, 3))


def test_every_image_defective_with_fraction_one():
    images = _constant_batch()
    out, masks, labels = jax.jit(paste_defects, static_argnums=(2, 3, 4))(images, jax.random.key(0), 1.0,
                                                                          (0.02, 0.1), (0.5, 1.0))
    out, masks, images = np.asarray(out), np.asarray(masks), np.asarray(images)
    np.testing.assert_array_equal(np.asarray(labels), 1)
    assert set(np.unique(masks)) == {0.0, 1.0}
    area = masks.mean((1, 2))
    assert np.all(area >= 0.02 - 1 / 32**2) and np.all(area <= 0.1 + 1 / 32**2), area
    inside, outside = masks[..., None].repeat(3, -1) > 0, masks[..., None].repeat(3, -1) == 0
    np.testing.assert_array_equal(out[outside], images[outside])
    for i in range(6):
        own, values = i + 1.0, np.unique(out[i][inside[i]])
        assert len(values) == 1  # one other (constant) image pasted with one opacity
        opacities = [(values[0] - own) / (other - own) for other in range(1, 7) if other != own]
        assert any(0.5 - 1e-6 <= beta <= 1 + 1e-6 for beta in opacities), (i, values)

def test_fraction_zero_changes_nothing_and_key_decides():
    images = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
    out, masks, labels = _paste(images, jax.random.key(2), fraction=0.0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(images))
    assert not np.any(np.asarray(masks)) and not np.any(np.asarray(labels))
    a = _paste(images, jax.random.key(3))
    b = _paste(images, jax.random.key(3))
    c = _paste(images, jax.random.key(4))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a[1]), np.asarray(c[1]))
    half = [int(_paste(images, jax.random.key(k))[2].sum()) for k in range(20)]
    assert 0.3 < np.mean(half) / 8 < 0.7  # fraction 0.5 by default


def test_non_square_images_and_smooth_noise():
    out, masks, labels = _paste(jax.random.normal(jax.random.key(5), (2, 16, 24, 3)), jax.random.key(6), 1.0)
    assert out.shape == (2, 16, 24, 3) and masks.shape == (2, 16, 24) and np.all(np.asarray(masks).sum((1, 2)) > 0)
    noise = np.asarray(jax.jit(smooth_noise, static_argnums=(1, 2, 3, 4))(jax.random.key(7), 4, 32, 32, (2,)))
    assert noise.shape == (4, 32, 32)
    assert np.abs(np.diff(noise, axis=1)).max() < 0.25  # a 3 x 3 grid upsampled to 32 x 32 is smooth


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="fraction=1.5"):
        paste_defects(jnp.zeros((2, 8, 8, 3)), jax.random.key(0), fraction=1.5)
    with pytest.raises(ValueError, match=r"expected \(batch, height, width, channels\)"):
        paste_defects(jnp.zeros((8, 8, 3)), jax.random.key(0))
