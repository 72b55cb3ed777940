"""Resampling for anomaly maps: bilinear upsampling with ``align_corners=True`` and a Gaussian blur.

Both match their PyTorch / SciPy counterparts (``F.interpolate(mode="bilinear", align_corners=True)``,
``scipy.ndimage.gaussian_filter(truncate=4.0, mode="reflect")``) so maps computed here line up with the
reference implementations of MambaAD and PatchCore-like baselines. Upsampling is two gathers and a lerp;
the blur is two small matmuls with banded matrices built at trace time (full float32 precision, so TF32 on
GPUs does not apply; one op per axis, so it compiles fast). Jittable with sizes and sigma static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


def _lerp_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Linear interpolation of ``x`` along ``axis`` to ``size`` samples, corners aligned.

    Source positions are computed in float32 as PyTorch does (``float(n - 1) / (size - 1) * i``), so the
    weights, not just the formula, are PyTorch's.
    """
    n = x.shape[axis]
    scale = np.float32(n - 1) / np.float32(size - 1) if size > 1 else np.float32(0)
    pos = np.arange(size, dtype=np.float32) * scale
    lo = np.minimum(np.floor(pos).astype(np.int32), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = size
    w = jnp.asarray((pos - lo).reshape(shape), x.dtype)
    return jnp.take(x, lo, axis=axis) * (1 - w) + jnp.take(x, hi, axis=axis) * w


def upsample_bilinear_align_corners(x: jax.Array, size: int | tuple[int, int]) -> jax.Array:
    """(B, h, w) or (B, h, w, C) -> (B, H, W[, C]) bilinear with corners aligned; ``size`` is H or (H, W)."""
    height, width = (size, size) if isinstance(size, int) else size
    if x.ndim not in (3, 4):
        raise ValueError(f"expected (B, h, w) or (B, h, w, C), got shape {x.shape}")
    return _lerp_axis(_lerp_axis(x, 1, height), 2, width)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """SciPy's 1-D Gaussian weights: radius ``int(truncate * sigma + 0.5)``, normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur_matrix(size: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """(size, size) matrix of the 1-D blur: row i holds the Gaussian taps around i, with SciPy's "reflect"
    boundary (d c b a | a b c d | d c b a, repeated for radii beyond the edge) folded in."""
    kernel = gaussian_kernel(sigma, truncate)
    radius = len(kernel) // 2
    source = np.arange(size)[:, None] + np.arange(-radius, radius + 1)[None, :]
    source = np.mod(source, 2 * size)
    source = np.where(source >= size, 2 * size - 1 - source, source)
    matrix = np.zeros((size, size))
    np.add.at(matrix, (np.repeat(np.arange(size), len(kernel)), source.ravel()), np.tile(kernel, size))
    return matrix


def gaussian_blur(maps: jax.Array, sigma: float, truncate: float = 4.0) -> jax.Array:
    """(B, H, W) -> (B, H, W): each map blurred like ``scipy.ndimage.gaussian_filter(m, sigma, truncate=...)``."""
    if maps.ndim != 3:
        raise ValueError(f"expected maps of shape (B, H, W), got {maps.shape}")
    if sigma <= 0:
        return maps
    rows = jnp.asarray(blur_matrix(maps.shape[1], sigma, truncate), maps.dtype)
    cols = jnp.asarray(blur_matrix(maps.shape[2], sigma, truncate), maps.dtype)
    out = jnp.einsum("ij,bjw->biw", rows, maps, precision=_HIGHEST)
    return jnp.einsum("bhj,wj->bhw", out, cols, precision=_HIGHEST)
