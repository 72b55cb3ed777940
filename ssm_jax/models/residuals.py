"""SNARM's residual features as pure functions of arrays: inter-residuals against a bank of normal patches,
in-image reference patches, intra-residuals against them, and the residual encoding the heads read.

* ``nearest_neighbours``: exact k-nearest bank rows of each query (squared Euclidean distance), over bank blocks
  in a ``lax.scan`` that keeps a running top-k, so memory is O(queries x (block + k)), never O(queries x bank).
  Rows may be excluded per query by a group id (training leaves a patch's own image out of its search).
* ``inter_residuals``: the mean of the k nearest bank rows minus the query (official code: ``topk`` neighbours,
  ``bank_mean - query``).
* ``select_references`` / ``intra_residuals``: the ``count`` patches of an image with the smallest navigation score
  are its references; every patch's intra-residual is its nearest reference (itself excluded) minus the patch.
* ``encode_residual``: what the heads see of a residual: ``abs``, ``square`` or ``abs_square`` (the official
  ``concat_abs_square``: ``[|r|, r^2]`` average-pooled over channels back to C).
* ``channel_pool``: torch's ``adaptive_avg_pool1d`` over the channel axis (PatchCore's feature aggregation).

All jittable with the integer arguments static; matmuls at full float32 precision (no TF32 passes on GPUs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST
ENCODINGS = ("abs", "square", "abs_square")


def channel_pool_matrix(channels: int, out: int) -> np.ndarray:
    """(channels, out) weights of torch's ``adaptive_avg_pool1d``: output j averages inputs
    ``floor(j * C / out)`` to ``ceil((j + 1) * C / out) - 1`` (windows overlap when ``out`` does not divide C)."""
    if channels < 1 or out < 1:
        raise ValueError(f"channel_pool needs positive sizes, got {channels} -> {out}")
    matrix = np.zeros((channels, out), np.float32)
    for j in range(out):
        start, end = (j * channels) // out, -(-((j + 1) * channels) // out)
        matrix[start:end, j] = 1.0 / (end - start)
    return matrix


def channel_pool(x: jax.Array, out: int) -> jax.Array:
    """(..., C) -> (..., out): adaptive average pooling over channels (identity when out == C)."""
    if x.shape[-1] == out:
        return x
    return jnp.matmul(x, jnp.asarray(channel_pool_matrix(x.shape[-1], out), x.dtype), precision=_HIGHEST)


def nearest_neighbours(queries: jax.Array, bank: jax.Array, k: int = 1, block: int = 4096,
                       query_groups: jax.Array | None = None, bank_groups: jax.Array | None = None):
    """Exact k nearest rows of ``bank`` (M, C) for each of ``queries`` (N, C): (indices (N, k), squared
    distances (N, k)), nearest first.

    With ``query_groups`` (N,) and ``bank_groups`` (M,), bank rows of a query's own group are excluded (their
    distance is +inf; a query whose group covers the whole bank gets +inf distances). Distances use
    |q|^2 - 2 q.b + |b|^2 clamped at 0.
    """
    queries, bank = jnp.asarray(queries, jnp.float32), jnp.asarray(bank, jnp.float32)
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"nearest_neighbours: queries {queries.shape} and bank {bank.shape} must be (N, C) and (M, C)")
    num, channels = bank.shape
    if not 1 <= k <= num:
        raise ValueError(f"nearest_neighbours: k={k} must lie in [1, {num}] (the bank's rows)")
    if (query_groups is None) != (bank_groups is None):
        raise ValueError("nearest_neighbours: pass both query_groups and bank_groups, or neither")
    block = min(block, num)
    blocks = -(-num // block)
    pad = blocks * block - num
    bank_sq = jnp.pad(jnp.sum(bank**2, axis=-1), (0, pad), constant_values=jnp.inf)  # padded rows never win
    padded = jnp.pad(bank, ((0, pad), (0, 0))).reshape(blocks, block, channels)
    groups = None if bank_groups is None else jnp.pad(jnp.asarray(bank_groups), (0, pad)).reshape(blocks, block)
    query_sq = jnp.sum(queries**2, axis=-1, keepdims=True)
    offsets = jnp.arange(blocks, dtype=jnp.int32) * block

    def scan_block(carry, inputs):
        best_d2, best_index = carry
        rows, rows_sq, offset, rows_group = inputs
        d2 = jnp.maximum(query_sq - 2 * jnp.matmul(queries, rows.T, precision=_HIGHEST) + rows_sq, 0.0)
        if rows_group is not None:
            d2 = jnp.where(query_groups[:, None] == rows_group[None, :], jnp.inf, d2)
        cand_d2 = jnp.concatenate([best_d2, d2], axis=1)
        cand_index = jnp.concatenate([best_index, jnp.broadcast_to(offset + jnp.arange(block, dtype=jnp.int32),
                                                                   d2.shape)], axis=1)
        neg, pos = jax.lax.top_k(-cand_d2, k)
        return (-neg, jnp.take_along_axis(cand_index, pos, axis=1)), None

    init = (jnp.full((queries.shape[0], k), jnp.inf, jnp.float32), jnp.zeros((queries.shape[0], k), jnp.int32))
    (d2, index), _ = jax.lax.scan(scan_block, init, (padded, bank_sq.reshape(blocks, block), offsets, groups))
    return index, d2


def inter_residuals(queries: jax.Array, bank: jax.Array, k: int = 1, block: int = 4096,
                    query_groups: jax.Array | None = None, bank_groups: jax.Array | None = None) -> jax.Array:
    """(N, C): mean of each query's k nearest bank rows minus the query. Excluded neighbours (+inf distance) are
    left out of the mean; a query with none left gets the zero vector as its neighbour mean."""
    index, d2 = nearest_neighbours(queries, bank, k, block, query_groups, bank_groups)
    valid = jnp.isfinite(d2).astype(jnp.float32)[..., None]
    neighbour_mean = jnp.sum(jnp.take(jnp.asarray(bank, jnp.float32), index, axis=0) * valid, axis=1)
    neighbour_mean = neighbour_mean / jnp.maximum(jnp.sum(valid, axis=1), 1.0)
    return neighbour_mean - jnp.asarray(queries, jnp.float32)


def reference_count(num_patches: int, ratio: float) -> int:
    """Python's ``round(num_patches * ratio)`` (as the official code), checked to leave the intra-residual defined
    (at least 2 references) and a sequence for the navigated Mamba (at least 1 non-reference patch)."""
    count = round(num_patches * ratio)
    if num_patches < 3:
        raise ValueError(f"the feature map has {num_patches} patch{'es' * (num_patches != 1)}; the intra-residual "
                         f"needs at least 3 (2 references and a patch to compare): use larger images")
    if not 2 <= count <= num_patches - 1:
        raise ValueError(f"self_ratio={ratio} gives {count} reference patches of {num_patches}; need between 2 and "
                         f"{num_patches - 1} (raise or lower self_ratio, or use a larger feature map)")
    return count


def select_references(scores: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """(indices (B, count) of the ``count`` smallest scores per row, lowest first; bool mask (B, L) of them)."""
    _, index = jax.lax.top_k(-scores, count)
    mask = jnp.zeros(scores.shape, bool).at[jnp.arange(scores.shape[0])[:, None], index].set(True)
    return index, mask


def intra_residuals(features: jax.Array, references: jax.Array) -> jax.Array:
    """(B, L, C): each patch's nearest reference patch of the same image minus the patch.

    ``references`` (B, R) indexes the reference patches; a reference's own position is excluded from its search
    (as in the official code), so references too get a non-trivial residual. Memory O(B x L x R).
    """
    features = jnp.asarray(features, jnp.float32)
    refs = jnp.take_along_axis(features, references[..., None], axis=1)  # (B, R, C)
    d2 = (jnp.sum(features**2, -1)[..., None] - 2 * jnp.einsum("blc,brc->blr", features, refs, precision=_HIGHEST)
          + jnp.sum(refs**2, -1)[:, None, :])
    own = jnp.arange(features.shape[1])[None, :, None] == references[:, None, :]
    nearest = jnp.argmin(jnp.where(own, jnp.inf, d2), axis=-1)  # (B, L)
    return jnp.take_along_axis(refs, nearest[..., None], axis=1) - features


def encode_residual(residual: jax.Array, method: str) -> jax.Array:
    """(..., C) -> (..., C): ``abs`` |r|, ``square`` r^2, ``abs_square`` [|r|, r^2] pooled over channels to C."""
    if method == "abs":
        return jnp.abs(residual)
    if method == "square":
        return residual**2
    if method == "abs_square":
        return channel_pool(jnp.concatenate([jnp.abs(residual), residual**2], axis=-1), residual.shape[-1])
    raise ValueError(f"residual encoding {method!r}; valid: {', '.join(ENCODINGS)}")
