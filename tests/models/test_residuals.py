"""SNARM's residual arithmetic against brute-force float64 NumPy references: k-nearest bank rows (indices exact,
squared distances 1e-5 relative / 1e-4 absolute), group exclusion, inter- and intra-residuals (1e-5), reference
selection, residual encodings and channel pooling (vs torch's adaptive_avg_pool1d when torch is installed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.models.residuals import (channel_pool, channel_pool_matrix, encode_residual, inter_residuals,
                                      intra_residuals, nearest_neighbours, reference_count, select_references)


def _pairwise(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return ((a[:, None] - b[None]) ** 2).sum(-1)


def _brute_knn(queries, bank, k, query_groups=None, bank_groups=None):
    d2 = _pairwise(queries, bank)
    if query_groups is not None:
        d2[np.asarray(query_groups)[:, None] == np.asarray(bank_groups)[None, :]] = np.inf
    index = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return index, np.take_along_axis(d2, index, axis=1)


@pytest.mark.parametrize("k,block", [(1, 4096), (3, 64), (5, 7)])
def test_nearest_neighbours_match_brute_force(k, block):
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((300, 10)).astype(np.float32)
    queries = np.concatenate([rng.standard_normal((60, 10)), bank[[0, 150, 299]]]).astype(np.float32)
    index, d2 = nearest_neighbours(queries, bank, k, block)
    ref_index, ref_d2 = _brute_knn(queries, bank, k)
    np.testing.assert_array_equal(np.asarray(index), ref_index)
    np.testing.assert_allclose(np.asarray(d2), ref_d2, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(index)[-3:, 0], [0, 150, 299])  # a bank row is its own nearest


def test_group_exclusion_leaves_own_rows_out():
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((120, 6)).astype(np.float32)
    bank_groups = np.repeat(np.arange(4), 30)  # rows of four "images"
    queries = bank[[3, 40, 100]] + 1e-3  # each nearest to a row of its own image
    query_groups = np.array([0, 1, 3])
    index, d2 = nearest_neighbours(queries, bank, 2, 16, jnp.asarray(query_groups), jnp.asarray(bank_groups))
    ref_index, ref_d2 = _brute_knn(queries, bank, 2, query_groups, bank_groups)
    np.testing.assert_array_equal(np.asarray(index), ref_index)
    np.testing.assert_allclose(np.asarray(d2), ref_d2, rtol=1e-5, atol=1e-4)
    assert not np.any(bank_groups[np.asarray(index)] == query_groups[:, None])
    _, d2_all = nearest_neighbours(queries, bank[:30], 1, 16, jnp.zeros(3, jnp.int32), jnp.zeros(30, jnp.int32))
    assert np.all(np.isinf(np.asarray(d2_all)))  # every row excluded


def test_inter_residuals_are_neighbour_means_minus_query():
    rng = np.random.default_rng(2)
    bank = rng.standard_normal((200, 8)).astype(np.float32)
    queries = rng.standard_normal((50, 8)).astype(np.float32)
    ref_index, _ = _brute_knn(queries, bank, 3)
    expected = bank.astype(np.float64)[ref_index].mean(1) - queries
    np.testing.assert_allclose(np.asarray(inter_residuals(queries, bank, 3, 32)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(inter_residuals(bank[:5], bank, 1)), 0.0, atol=1e-7)
    groups = jnp.zeros(50, jnp.int32)
    np.testing.assert_allclose(np.asarray(inter_residuals(queries, bank, 2, 64, groups, groups[:1].repeat(200))),
                               -queries, atol=0)  # nothing left to compare with: the zero vector


def test_select_references_takes_the_smallest_scores():
    scores = np.random.default_rng(3).random((4, 30)).astype(np.float32)
    index, mask = select_references(jnp.asarray(scores), 12)
    np.testing.assert_array_equal(np.asarray(index), np.argsort(scores, axis=1)[:, :12])
    expected_mask = np.zeros((4, 30), bool)
    np.put_along_axis(expected_mask, np.argsort(scores, axis=1)[:, :12], True, axis=1)
    np.testing.assert_array_equal(np.asarray(mask), expected_mask)
    assert reference_count(1024, 0.75) == 768 and reference_count(5, 0.5) == 2  # Python's round, as the official code
    for ratio in (0.01, 1.0):
        with pytest.raises(ValueError, match="self_ratio"):
            reference_count(64, ratio)


def test_intra_residuals_match_brute_force():
    rng = np.random.default_rng(4)
    features = rng.standard_normal((3, 40, 6)).astype(np.float32)
    refs = np.stack([rng.choice(40, 15, replace=False) for _ in range(3)])
    out = np.asarray(intra_residuals(jnp.asarray(features), jnp.asarray(refs)))
    for b in range(3):
        d2 = _pairwise(features[b], features[b][refs[b]])
        for j, r in enumerate(refs[b]):
            d2[r, j] = np.inf  # a reference never matches itself
        nearest = refs[b][d2.argmin(1)]
        np.testing.assert_allclose(out[b], features[b][nearest].astype(np.float64) - features[b], rtol=1e-5, atol=1e-6)
        assert np.all(np.abs(out[b][refs[b]]).sum(-1) > 0)


def test_channel_pool_is_adaptive_average_pooling():
    x = np.random.default_rng(5).standard_normal((2, 3, 12)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(channel_pool(jnp.asarray(x), 4)), x.reshape(2, 3, 4, 3).mean(-1), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(channel_pool(jnp.asarray(x), 12)), x)  # same width: identity
    matrix = channel_pool_matrix(10, 4)  # windows [0,3), [2,5), [5,8), [7,10) overlap
    np.testing.assert_allclose(matrix.sum(0), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(matrix[:, 1] > 0, np.isin(np.arange(10), [2, 3, 4]))
    torch = pytest.importorskip("torch")
    y = np.random.default_rng(6).standard_normal((5, 1536)).astype(np.float32)
    expected = torch.nn.functional.adaptive_avg_pool1d(torch.from_numpy(y)[:, None], 1024)[:, 0].numpy()
    np.testing.assert_allclose(np.asarray(channel_pool(jnp.asarray(y), 1024)), expected, rtol=1e-5, atol=1e-6)


def test_residual_encodings():
    r = np.random.default_rng(7).standard_normal((2, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(encode_residual(jnp.asarray(r), "abs")), np.abs(r))
    np.testing.assert_allclose(np.asarray(encode_residual(jnp.asarray(r), "square")), r**2, rtol=1e-6)
    both = np.concatenate([np.abs(r), r**2], -1).astype(np.float64)
    expected = both.reshape(2, 5, 6, 2).mean(-1)  # official concat_abs_square: pairs of [|r|, r^2] averaged
    np.testing.assert_allclose(np.asarray(encode_residual(jnp.asarray(r), "abs_square")), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="residual encoding 'cube'"):
        encode_residual(jnp.asarray(r), "cube")


def test_jit_and_errors():
    bank = jnp.ones((10, 4))
    index, _ = jax.jit(nearest_neighbours, static_argnums=(2, 3))(jnp.zeros((3, 4)), bank, 2, 4)
    assert index.shape == (3, 2)
    with pytest.raises(ValueError, match="k=11"):
        nearest_neighbours(jnp.zeros((3, 4)), bank, 11)
    with pytest.raises(ValueError, match=r"\(N, C\) and \(M, C\)"):
        nearest_neighbours(jnp.zeros((3, 5)), bank)
    with pytest.raises(ValueError, match="both query_groups and bank_groups"):
        nearest_neighbours(jnp.zeros((3, 4)), bank, query_groups=jnp.zeros(3, jnp.int32))
