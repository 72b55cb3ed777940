"""Nearest-normal-patch baseline: coreset vs a NumPy greedy reference (same indices), nearest distances vs brute
force (float32 vs float64: 1e-5 relative / 1e-5 absolute), maps vs the composition of their parts, jit."""

import jax
import numpy as np
import pytest
from scipy import ndimage

from ssm_jax.models.patch_bank import (build_bank, greedy_coreset, nearest_distances, patch_distance_maps,
                                       random_projection)
from ssm_jax.nn.resample import upsample_bilinear_align_corners


def _greedy_reference(x, size, start):
    """k-center greedy in float64: start, then repeatedly the point farthest from the selected set."""
    x = np.asarray(x, np.float64)
    selected = [start]
    min_dist = np.linalg.norm(x - x[start], axis=1)
    for _ in range(size - 1):
        selected.append(int(np.argmax(min_dist)))
        min_dist = np.minimum(min_dist, np.linalg.norm(x - x[selected[-1]], axis=1))
    return np.array(selected)


def _brute_force(queries, bank):
    d = np.linalg.norm(queries[:, None].astype(np.float64) - bank[None].astype(np.float64), axis=-1)
    return d.min(axis=1), d.argmin(axis=1), d


@pytest.mark.parametrize("projection_dim", [None, 8])
def test_greedy_coreset_matches_numpy(projection_dim):
    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    ours = np.asarray(greedy_coreset(x, 25, seed=3, projection_dim=projection_dim))
    seen = x if projection_dim is None else np.asarray(random_projection(x, projection_dim, seed=3))
    np.testing.assert_array_equal(ours, _greedy_reference(seen, 25, int(ours[0])))
    assert len(set(ours.tolist())) == 25
    np.testing.assert_array_equal(greedy_coreset(x, 25, seed=3, projection_dim=projection_dim), ours)
    assert {int(greedy_coreset(x, 1, seed=s)[0]) for s in range(5)} != {int(ours[0])}  # the seed picks the start


def test_build_bank():
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((2, 4, 4, 8)).astype(np.float32) for _ in range(3)]
    full = np.concatenate([b.reshape(-1, 8) for b in batches])
    np.testing.assert_array_equal(build_bank(iter(batches)), full)
    sub = np.asarray(build_bank(batches, max_patches=50, seed=2))
    assert sub.shape == (50, 8) and all((row == full).all(axis=1).any() for row in sub)
    core = build_bank(batches, coreset_ratio=0.25, seed=2, projection_dim=None)
    np.testing.assert_array_equal(core, full[np.asarray(greedy_coreset(full, 24, seed=2, projection_dim=None))])
    with pytest.raises(ValueError, match="coreset_ratio"):
        build_bank(batches, coreset_ratio=0.0)
    with pytest.raises(ValueError, match=r"\(B, h, w, C\)"):
        build_bank([full])


@pytest.mark.parametrize("block", [4096, 256, 7])
def test_nearest_distances_match_brute_force(block):
    rng = np.random.default_rng(2)
    bank = rng.standard_normal((1000, 12)).astype(np.float32)
    queries = np.concatenate([rng.standard_normal((100, 12)).astype(np.float32), bank[[5, 999, 512]]])
    dist, index = jax.jit(nearest_distances, static_argnames="block")(queries, bank, block=block)
    ref_dist, ref_index, all_dist = _brute_force(queries, bank)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(all_dist[np.arange(len(queries)), index], ref_dist, rtol=1e-5, atol=1e-5)
    second = np.sort(all_dist, axis=1)[:, 1]
    clear = second - ref_dist > 1e-3  # a clear winner must be found exactly
    np.testing.assert_array_equal(np.asarray(index)[clear], ref_index[clear])
    np.testing.assert_array_equal(index[-3:], [5, 999, 512])
    np.testing.assert_array_equal(dist[-3:], 0.0)  # recomputed directly: no cancellation error
    assert dist.shape == index.shape == (103,)


def test_patch_distance_maps():
    rng = np.random.default_rng(3)
    features = [rng.standard_normal(shape).astype(np.float32) for shape in ((2, 8, 8, 6), (2, 4, 4, 10))]
    banks = [rng.standard_normal((50, 6)).astype(np.float32), rng.standard_normal((30, 10)).astype(np.float32)]
    fn = jax.jit(patch_distance_maps, static_argnames=("out_size", "sigma", "block"))
    maps, scores = fn(features, banks, out_size=32, sigma=4.0, block=16)
    assert maps.shape == (2, 32, 32) and scores.shape == (2,)
    up = [upsample_bilinear_align_corners(_brute_force(f.reshape(-1, f.shape[-1]), b)[0].reshape(f.shape[:3])
                                          .astype(np.float32), 32) for f, b in zip(features, banks)]
    expected = np.stack([ndimage.gaussian_filter(m, 4.0, truncate=4.0) for m in np.mean(up, axis=0)])
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores, expected.max(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    raw, raw_scores = fn(features, banks, out_size=(16, 24), sigma=0.0, block=4096)
    assert raw.shape == (2, 16, 24) and np.allclose(raw_scores, raw.max(axis=(1, 2)))
    with pytest.raises(ValueError, match="one bank per feature scale"):
        patch_distance_maps(features, banks[:1], 32)
