"""Independent float64 NumPy reference of the selective scan recurrence (mamba_ssm selective_scan_ref)."""

import numpy as np


def selective_scan_numpy(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Step-by-step recurrence in float64. Returns (y (batch, L, D), last_state (batch, D, N))."""
    u, delta, A, B, C = (np.asarray(x, np.float64) for x in (u, delta, A, B, C))
    batch, length, dim = u.shape
    if B.ndim == 3:
        B, C = B[:, :, None], C[:, :, None]
    group_of = np.arange(dim) // (dim // B.shape[2])
    if delta_bias is not None:
        delta = delta + np.asarray(delta_bias, np.float64)
    if delta_softplus:
        delta = np.log1p(np.exp(delta))
    state = np.zeros((batch, dim, A.shape[1]))
    y = np.zeros((batch, length, dim))
    for t in range(length):
        b_t, c_t = B[:, t, group_of], C[:, t, group_of]  # (batch, D, N)
        state = np.exp(delta[:, t, :, None] * A) * state + (delta[:, t] * u[:, t])[..., None] * b_t
        y[:, t] = (state * c_t).sum(-1)
    if D is not None:
        y = y + u * np.asarray(D, np.float64)
    if z is not None:
        z = np.asarray(z, np.float64)
        y = y * z / (1 + np.exp(-z))
    return y, state


def random_scan_inputs(rng, batch, length, dim, d_state, groups=None, dtype=np.float32):
    """Random inputs in the ranges a Mamba layer sees: negative A and positive delta, so the scan is stable."""
    bc_shape = (batch, length, d_state) if groups is None else (batch, length, groups, d_state)
    return dict(
        u=rng.standard_normal((batch, length, dim)).astype(dtype),
        delta=(0.5 * np.abs(rng.standard_normal((batch, length, dim)))).astype(dtype),
        A=(-np.exp(rng.standard_normal((dim, d_state)) * 0.5)).astype(np.float32),
        B=rng.standard_normal(bc_shape).astype(dtype),
        C=rng.standard_normal(bc_shape).astype(dtype),
        D=rng.standard_normal(dim).astype(np.float32),
        z=rng.standard_normal((batch, length, dim)).astype(dtype),
        delta_bias=(0.2 * np.abs(rng.standard_normal(dim))).astype(np.float32),
    )


def rel_err(x, ref):
    """Norm-wise relative error ||x - ref|| / ||ref||."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))
