"""Checks of jax results made on the host, in NumPy: a jnp op per leaf shape would compile once for each on CPU."""

import jax
import numpy as np


def finite_on_host(tree):
    """``tree`` fetched to NumPy, after asserting that every leaf is finite."""
    tree = jax.device_get(tree)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(tree))
    return tree
