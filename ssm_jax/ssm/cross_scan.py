"""Cross-scan and cross-merge: turn a 2-D map into K 1-D sequences along scan orders, and back.

Both are gathers with static (NumPy) index arrays, so they jit, vmap and differentiate cleanly; merging uses the
inverse permutations rather than a scatter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ssm_jax.ssm.scan_orders import inverse_orders


def _check_orders(orders, length: int, fn: str) -> np.ndarray:
    orders = np.asarray(orders)
    if orders.ndim != 2 or orders.shape[1] != length:
        raise ValueError(f"{fn}: `orders` has shape {orders.shape}, expected (directions, {length})")
    return orders


def cross_scan(x: jax.Array, orders) -> jax.Array:
    """(B, H, W, C) map -> (B, K, H*W, C): sequence k visits the cells in ``orders[k]``."""
    if x.ndim != 4:
        raise ValueError(f"cross_scan: `x` has shape {tuple(x.shape)}, expected (batch, height, width, channels)")
    batch, height, width, channels = x.shape
    orders = _check_orders(orders, height * width, "cross_scan")
    return jnp.take(x.reshape(batch, height * width, channels), orders, axis=1)


def cross_merge(y: jax.Array, orders, height: int, width: int) -> jax.Array:
    """(B, K, H*W, C) sequences -> (B, H, W, C): each put back in place, summed over the K directions."""
    if y.ndim != 4:
        raise ValueError(f"cross_merge: `y` has shape {tuple(y.shape)}, expected (batch, directions, length, channels)")
    orders = _check_orders(orders, height * width, "cross_merge")
    if y.shape[1:3] != orders.shape:
        raise ValueError(f"cross_merge: `y` has shape {tuple(y.shape)}, expected (batch, {orders.shape[0]}, "
                         f"{orders.shape[1]}, channels) to match `orders`")
    inverse = jnp.asarray(inverse_orders(orders))
    placed = jnp.take_along_axis(y, inverse[None, :, :, None], axis=2)
    return placed.sum(axis=1).reshape(y.shape[0], height, width, y.shape[-1])
