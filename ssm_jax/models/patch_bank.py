"""Nearest-normal-patch baseline (PatchCore-like): no training, a bank of normal patch features and distances.

The anomaly score of a test patch is its Euclidean distance to the nearest patch of the bank (features of
normal training images, optionally thinned to a greedy k-center coreset); per scale the patch distances are
upsampled (bilinear, corners aligned) to the image size, averaged over scales and Gaussian-blurred; the image
score is the map's maximum. The same (maps, scores) output as every other AD model here, so evaluation and
pictures are shared. Pure functions of arrays; memory is bounded by blocking, never O(M^2) or O(N*M).

Coreset (Sener & Savarese's k-center greedy, as used by PatchCore): the first index is a seeded random patch,
each next one the patch farthest from those selected so far. Distances for the selection may be taken after
a Gaussian random projection to ``projection_dim`` dims (Johnson-Lindenstrauss; only the choice of indices
uses it, the bank keeps the full features).
"""

from __future__ import annotations

import functools
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ssm_jax.nn.resample import gaussian_blur, upsample_bilinear_align_corners

_HIGHEST = jax.lax.Precision.HIGHEST  # float32 matmuls (no TF32 / bf16 passes on GPU)


def random_projection(features: jax.Array, dim: int, seed: int = 0) -> jax.Array:
    """(M, C) -> (M, dim) with a seeded Gaussian matrix N(0, 1/dim), distances preserved in expectation."""
    matrix = jax.random.normal(jax.random.key(seed), (features.shape[-1], dim), jnp.float32) / np.sqrt(dim)
    return jnp.matmul(features, matrix, precision=_HIGHEST)


def greedy_coreset(features: jax.Array, size: int, seed: int = 0, projection_dim: int | None = 128) -> jax.Array:
    """Indices (size,) of a greedy k-center coreset of ``features`` (M, C), in selection order.

    Starts at a seeded random index; each step adds the point with the largest distance to the selected set.
    Memory O(M): one running minimum distance per point. Projects to ``projection_dim`` first when
    ``projection_dim`` is smaller than C (None: never).
    """
    features = jnp.asarray(features, jnp.float32)
    num = features.shape[0]
    if not 1 <= size <= num:
        raise ValueError(f"coreset size must be in [1, {num}], got {size}")
    if projection_dim is not None and projection_dim < features.shape[1]:
        features = random_projection(features, projection_dim, seed)
    start = jax.random.randint(jax.random.key(seed), (), 0, num)
    return _greedy(features, start, size)


@functools.partial(jax.jit, static_argnums=2)
def _greedy(features, start, size):
    def sq_dist(index):
        return jnp.sum((features - features[index]) ** 2, axis=-1)

    def step(i, carry):
        selected, min_dist = carry
        index = jnp.argmax(min_dist).astype(jnp.int32)
        return selected.at[i].set(index), jnp.minimum(min_dist, sq_dist(index))

    selected = jnp.zeros(size, jnp.int32).at[0].set(start)
    selected, _ = jax.lax.fori_loop(1, size, step, (selected, sq_dist(start)))
    return selected


def build_bank(features_iter: Iterable, max_patches: int | None = None, coreset_ratio: float = 1.0,
               seed: int = 0, projection_dim: int | None = 128) -> jax.Array:
    """Memory bank (M, C) from batches of normal-image features (B, h, w, C), each patch a row.

    ``max_patches``: a seeded uniform subsample of at most this many patches (taken first); ``coreset_ratio``
    < 1 keeps ``max(1, int(M * ratio))`` patches by ``greedy_coreset``.
    """
    if not 0 < coreset_ratio <= 1:
        raise ValueError(f"coreset_ratio must lie in (0, 1], got {coreset_ratio}")
    batches = [np.asarray(f, np.float32) for f in features_iter]
    if not batches:
        raise ValueError("features_iter yielded no batches; expected (B, h, w, C) features of normal images")
    for f in batches:
        if f.ndim != 4:
            raise ValueError(f"expected feature batches of shape (B, h, w, C), got {f.shape}")
    bank = np.concatenate([f.reshape(-1, f.shape[-1]) for f in batches])
    if max_patches is not None and bank.shape[0] > max_patches:
        keep = np.random.default_rng(seed).choice(bank.shape[0], max_patches, replace=False)
        bank = bank[np.sort(keep)]
    bank = jnp.asarray(bank)
    if coreset_ratio < 1:
        bank = bank[greedy_coreset(bank, max(1, int(bank.shape[0] * coreset_ratio)), seed, projection_dim)]
    return bank


def nearest_distances(queries: jax.Array, bank: jax.Array, block: int = 4096) -> tuple[jax.Array, jax.Array]:
    """Exact Euclidean nearest neighbour of each query (N, C) in ``bank`` (M, C): (distance (N,), index (N,)).

    The neighbour is found from squared distances |q|^2 - 2 q.b + |b|^2 (clamped at 0) over bank blocks of
    ``block`` rows in a ``lax.scan``, keeping the running minimum, so peak memory is O(N * block); its
    distance is then recomputed directly as |q - b|, free of the expansion's cancellation (which costs up to
    ~1e-3 absolute near 0 in float32). Jittable (``block`` static).
    """
    queries, bank = jnp.asarray(queries, jnp.float32), jnp.asarray(bank, jnp.float32)
    num, channels = bank.shape
    block = min(block, num)
    blocks = -(-num // block)
    pad = blocks * block - num
    bank_sq = jnp.pad(jnp.sum(bank**2, axis=-1), (0, pad), constant_values=jnp.inf)  # padded rows never win
    padded = jnp.pad(bank, ((0, pad), (0, 0))).reshape(blocks, block, channels)
    query_sq = jnp.sum(queries**2, axis=-1, keepdims=True)

    def scan_block(carry, inputs):
        best, best_index = carry
        b, b_sq, offset = inputs
        d2 = query_sq - 2 * jnp.matmul(queries, b.T, precision=_HIGHEST) + b_sq
        local, local_d2 = jnp.argmin(d2, axis=-1), jnp.min(d2, axis=-1)
        better = local_d2 < best
        return (jnp.where(better, local_d2, best), jnp.where(better, offset + local, best_index)), None

    init = (jnp.full(queries.shape[0], jnp.inf, jnp.float32), jnp.zeros(queries.shape[0], jnp.int32))
    offsets = jnp.arange(blocks, dtype=jnp.int32) * block
    (_, index), _ = jax.lax.scan(scan_block, init, (padded, bank_sq.reshape(blocks, block), offsets))
    return jnp.sqrt(jnp.sum((queries - bank[index]) ** 2, axis=-1)), index


def patch_distance_maps(features: Sequence[jax.Array], banks: Sequence[jax.Array], out_size: int | tuple[int, int],
                        sigma: float = 4.0, block: int = 4096) -> tuple[jax.Array, jax.Array]:
    """Anomaly maps (B, H, W) and image scores (B,) from per-scale features (B, h_i, w_i, C_i) and their banks.

    Per scale: nearest-normal-patch distance of every position, upsampled to ``out_size`` (bilinear, corners
    aligned); then the mean over scales, a Gaussian blur of ``sigma`` (0: none); score = the map's maximum.
    Jittable with ``out_size``, ``sigma`` and ``block`` static.
    """
    if len(features) != len(banks) or not features:
        raise ValueError(f"need one bank per feature scale, got {len(features)} scales and {len(banks)} banks")
    maps = []
    for f, bank in zip(features, banks):
        batch, height, width, channels = f.shape
        dist, _ = nearest_distances(f.reshape(-1, channels), bank, block)
        maps.append(upsample_bilinear_align_corners(dist.reshape(batch, height, width), out_size))
    maps = gaussian_blur(jnp.mean(jnp.stack(maps), axis=0), sigma)
    return maps, jnp.max(maps, axis=(1, 2))
