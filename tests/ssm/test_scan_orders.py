"""Scan orders are permutations with working inverses; Hilbert steps are 4-neighbour moves; cross-scan round trip."""

import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.ssm import METHODS, cross_merge, cross_scan, inverse_orders, scan_orders

SIZES = [(1, 1), (1, 6), (4, 4), (7, 9), (9, 7), (8, 8), (14, 14), (56, 56)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("height, width", SIZES)
def test_every_order_is_a_permutation_with_inverse(method, height, width):
    orders = scan_orders(method, height, width, directions=8)
    assert orders.shape == (8, height * width)
    for row in orders:
        assert np.array_equal(np.sort(row), np.arange(height * width))
    inverse = inverse_orders(orders)
    grid = np.random.default_rng(0).standard_normal(height * width)
    for k in range(8):
        assert np.array_equal(grid[orders[k]][inverse[k]], grid)


@pytest.mark.parametrize("method", METHODS)
def test_directions_are_views_forward_then_reversed(method):
    orders8 = scan_orders(method, 5, 6, directions=8)
    assert np.array_equal(orders8[4:], orders8[:4, ::-1])
    assert np.array_equal(scan_orders(method, 5, 6, directions=4), orders8[[0, 1, 4, 5]])
    assert np.array_equal(scan_orders(method, 5, 6, directions=2), orders8[[0, 4]])
    assert np.array_equal(scan_orders(method, 5, 6, directions=1), orders8[:1])
    if method in ("sweep", "zorder"):  # curves with no mirror symmetry give 8 distinct directions
        assert len({tuple(o) for o in orders8}) == 8


def test_views_match_mambaad_transforms():
    """Direction k scans the transformed map row by row: transpose, rot90 and rot90-transposed as in numpy."""
    grid = np.arange(4 * 6).reshape(4, 6)
    orders = scan_orders("sweep", 4, 6, directions=8)
    views = [grid, grid.T, np.rot90(grid, 1), np.rot90(grid, 1).T]
    for k, view in enumerate(views):
        assert orders[k].tolist() == view.reshape(-1).tolist()

def _steps(order, width):
    rows, cols = np.divmod(order, width)
    return np.abs(np.diff(rows)) + np.abs(np.diff(cols))


@pytest.mark.parametrize("size", [2, 4, 8, 16, 32, 64])
def test_hilbert_visits_neighbours_on_power_of_two_squares(size):
    for order in scan_orders("hilbert", size, size):
        assert np.all(_steps(order, size) == 1)


@pytest.mark.parametrize("height, width", [(6, 10), (12, 20), (28, 28)])
def test_hilbert_is_continuous_on_even_rectangles(height, width):
    for order in scan_orders("hilbert", height, width):
        assert np.all(_steps(order, width) == 1)


def test_known_small_orders():
    assert scan_orders("sweep", 2, 3, 1)[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert scan_orders("scan", 2, 3, 1)[0].tolist() == [0, 1, 2, 5, 4, 3]
    assert scan_orders("zigzag", 3, 3, 1)[0].tolist() == [0, 1, 3, 6, 4, 2, 5, 7, 8]
    assert scan_orders("zorder", 4, 4, 1)[0].tolist()[:8] == [0, 1, 4, 5, 2, 3, 6, 7]
    assert scan_orders("sweep", 2, 3, 4)[1].tolist() == [0, 3, 1, 4, 2, 5]
    assert scan_orders("sweep", 2, 3, 4)[2].tolist() == [5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("directions", [2, 4, 8])
def test_cross_merge_of_cross_scan_is_k_times_x(method, directions):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 7, 9, 3)), jnp.float32)
    orders = scan_orders(method, 7, 9, directions)
    seqs = cross_scan(x, orders)
    assert seqs.shape == (2, directions, 63, 3)
    np.testing.assert_array_equal(seqs[:, 0, 5], x.reshape(2, 63, 3)[:, orders[0, 5]])
    np.testing.assert_allclose(cross_merge(seqs, orders, 7, 9), directions * x, rtol=1e-6)


def test_bad_names_and_shapes():
    with pytest.raises(ValueError, match="unknown method 'spiral'; valid: sweep, scan, zorder, zigzag, hilbert"):
        scan_orders("spiral", 4, 4)
    with pytest.raises(ValueError, match="directions=3"):
        scan_orders("sweep", 4, 4, directions=3)
    with pytest.raises(ValueError, match="`height` is 0"):
        scan_orders("sweep", 0, 4)
    orders = scan_orders("sweep", 4, 4)
    with pytest.raises(ValueError, match=r"`orders` has shape \(8, 16\), expected \(directions, 20\)"):
        cross_scan(jnp.zeros((1, 4, 5, 2)), orders)
    with pytest.raises(ValueError, match="expected \\(batch, height, width, channels\\)"):
        cross_scan(jnp.zeros((4, 4, 2)), orders)
    with pytest.raises(ValueError, match="to match `orders`"):
        cross_merge(jnp.zeros((1, 4, 16, 2)), orders, 4, 4)
