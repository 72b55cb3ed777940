"""The selective scan (S6) of Mamba, as a pure function of arrays.

Semantics follow mamba_ssm's ``selective_scan_ref``, in this project's (batch, length, channels) layout:

    delta  <- softplus(delta + delta_bias)          (bias and softplus optional)
    x_t    =  exp(delta_t * A) * x_{t-1} + delta_t * B_t * u_t      state x: (batch, D, N), x_0 = 0
    y_t    =  <x_t, C_t> + D * u_t
    out    =  y * silu(z)                           (gate optional)

Implementations, selected by ``impl``:

* ``sequential``  -- ``lax.scan`` over time: the readable reference, O(B*D*N) memory.
* ``associative`` -- ``lax.associative_scan`` over time: parallel, O(B*L*D*N) memory.
* ``chunked``     -- associative inside chunks of ``chunk_size`` steps, state carried across chunks by
                     ``lax.scan`` with rematerialisation: parallel with O(B*chunk*D*N) memory, also in backward.
* ``pallas``      -- the fused GPU kernel in ``kernels/selective_scan`` (Pallas ``interpret`` mode off GPU).
* ``auto``        -- ``pallas`` on GPU, ``sequential`` on CPU (2-6x faster there than ``associative`` forward and
                     backward, with less memory: ``benchmarks/scan.py --small``), ``associative`` on TPU.

With ``order`` (G, L), the channels of group g (and B, C of group g) are scanned in the order order[g] and y comes
back at the positions: a 2-D map scanned in K directions at once, one group each, as SS2D does. The Pallas kernel
visits the positions in place; the other implementations gather each group into its order and put y back.

Arithmetic is float32 (float64 when the inputs are float64, except in ``pallas``, which is float32 whatever they
are); the output has the dtype of ``u``. ``pallas`` has a reverse-mode rule (``jax.grad``, ``jax.vjp``) and no
forward-mode one: ``jax.jvp``, ``jax.jacfwd`` and Hessians through the scan need one of the other implementations.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

IMPLS = ("auto", "sequential", "associative", "chunked", "pallas")
DEFAULT_CHUNK_SIZE = 64


class ScanInputs(NamedTuple):
    """Validated inputs in canonical form: B and C always grouped as (batch, L, G, N)."""

    u: jax.Array
    delta: jax.Array
    A: jax.Array
    B: jax.Array
    C: jax.Array
    D: jax.Array | None
    z: jax.Array | None
    delta_bias: jax.Array | None


def _expect(name: str, x, shape: tuple, why: str = "") -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"selective_scan: `{name}` has shape {tuple(x.shape)}, expected {tuple(shape)}{why}")


def _expect_float(name: str, x) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"selective_scan: `{name}` has dtype {x.dtype}, expected a floating dtype")


def validate_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> ScanInputs:
    """Check shapes and dtypes; return the inputs with B and C in grouped form (batch, L, G, N)."""
    for name, x in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if x is not None and not hasattr(x, "shape"):
            raise ValueError(f"selective_scan: `{name}` must be an array, got {type(x).__name__}")
    if u.ndim != 3:
        raise ValueError(f"selective_scan: `u` has shape {tuple(u.shape)}, expected (batch, length, dim)")
    batch, length, dim = u.shape
    shared_u = delta.ndim == 3 and tuple(delta.shape[:2]) == (batch, length) and delta.shape[2] > dim
    if shared_u:  # u holds one group's channels; delta has them all (checked against the groups below)
        dim = delta.shape[2]
    _expect("delta", delta, (batch, length, dim), ", the shape of `u` (both (batch, length, dim))")
    if A.ndim != 2 or A.shape[0] != dim:
        why = (f" (`delta` {tuple(delta.shape)} is wider than `u` {tuple(u.shape)}, which reads u as shared by B "
               f"and C's groups: delta, A, D and z are then as wide as all groups)" if shared_u else "")
        raise ValueError(f"selective_scan: `A` has shape {tuple(A.shape)}, expected ({dim}, d_state){why}")
    d_state = A.shape[1]
    grouped = []
    for name, x in (("B", B), ("C", C)):
        if x.ndim == 3:
            _expect(name, x, (batch, length, d_state))
            x = x[:, :, None, :]
        elif x.ndim == 4:
            groups = x.shape[2]
            _expect(name, x, (batch, length, groups, d_state))
            if groups == 0 or dim % groups:
                raise ValueError(
                    f"selective_scan: `{name}` has {groups} groups, expected a divisor of dim={dim}"
                )
        else:
            raise ValueError(
                f"selective_scan: `{name}` has shape {tuple(x.shape)}, expected ({batch}, {length}, {d_state}) "
                f"or ({batch}, {length}, groups, {d_state})"
            )
        grouped.append(x)
    B, C = grouped
    if B.shape[2] != C.shape[2]:
        raise ValueError(f"selective_scan: `B` has {B.shape[2]} groups but `C` has {C.shape[2]}; expected equal")
    if shared_u and u.shape[2] * B.shape[2] != dim:
        raise ValueError(f"selective_scan: `u` has shape {tuple(u.shape)} and `delta` {tuple(delta.shape)}; expected "
                         f"u with delta's shape, or shared by the {B.shape[2]} groups: "
                         f"({batch}, {length}, {dim // B.shape[2]})")
    if D is not None:
        _expect("D", D, (dim,))
    if z is not None:
        _expect("z", z, (batch, length, dim))
    if delta_bias is not None:
        _expect("delta_bias", delta_bias, (dim,))
    for name, x in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if x is not None:
            _expect_float(name, x)
    return ScanInputs(u, delta, A, B, C, D, z, delta_bias)


def compute_dtype(dtype) -> jnp.dtype:
    """float32 arithmetic, or float64 when the inputs already are."""
    return jnp.promote_types(dtype, jnp.float32)


def discretize_delta(delta, delta_bias, delta_softplus, dtype):
    """delta + bias, then softplus if asked, in the compute dtype."""
    delta = delta.astype(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.astype(dtype)
    if delta_softplus:
        delta = softplus(delta)
    return delta


@jax.custom_jvp
def softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), exact and stable for every x, with sigmoid(x) as its
    derivative (also at 0, where max and abs have kinks). ``jax.nn.softplus`` is ``logaddexp(x, 0)``, whose NaN
    guard (``x != x``, then a select) XLA compiled on a GPU as a pass of its own over delta."""
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return softplus(x), t * jax.nn.sigmoid(x)


def group_sum(y, groups: int, dtype=jnp.float32):
    """(batch, L, D) -> (batch, L, D / G) in y's dtype: channel j the sum, added in ``dtype``, of the groups' channels
    g * D / G + j (``sum_groups``; a shared u's gradient)."""
    return y.astype(dtype).reshape(*y.shape[:2], groups, -1).sum(axis=2).astype(y.dtype)


def expand_groups(x, dim: int):
    """(batch, L, G, N) -> (batch, L, dim, N): channel d reads group d // (dim // G)."""
    groups = x.shape[2]
    return jnp.repeat(x, dim // groups, axis=2)


def finish_output(y, u, D, z, out_dtype):
    """Skip connection D*u and SiLU gate, then cast to the output dtype."""
    dtype = y.dtype
    if D is not None:
        y = y + u.astype(dtype) * D.astype(dtype)
    if z is not None:
        y = y * jax.nn.silu(z.astype(dtype))
    return y.astype(out_dtype)


def _transition(delta, A, B, u, dim):
    """Per-step decay exp(delta*A) and input delta*B*u, both (batch, L, D, N)."""
    decay = jnp.exp(delta[..., None] * A)
    drive = (delta * u)[..., None] * expand_groups(B, dim)
    return decay, drive


def _combine(left, right):
    """Compose two affine maps x -> a*x + b (left applied first)."""
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r


def _scan_sequential(u, delta, A, B, C):
    dim = u.shape[-1]

    def step(state, inputs):
        u_t, delta_t, B_t, C_t = inputs  # (batch, D), (batch, D), (batch, G, N), (batch, G, N)
        decay = jnp.exp(delta_t[..., None] * A)
        B_t = jnp.repeat(B_t, dim // B_t.shape[1], axis=1)
        C_t = jnp.repeat(C_t, dim // C_t.shape[1], axis=1)
        state = decay * state + (delta_t * u_t)[..., None] * B_t
        return state, jnp.einsum("bdn,bdn->bd", state, C_t)

    state0 = jnp.zeros((u.shape[0], dim, A.shape[1]), u.dtype)
    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (u, delta, B, C))
    last, y = jax.lax.scan(step, state0, xs)
    return jnp.moveaxis(y, 0, 1), last


def _scan_associative(u, delta, A, B, C):
    dim = u.shape[-1]
    decay, drive = _transition(delta, A, B, u, dim)
    _, states = jax.lax.associative_scan(_combine, (decay, drive), axis=1)
    y = jnp.einsum("bldn,bldn->bld", states, expand_groups(C, dim))
    return y, states[:, -1]


def _scan_chunked(u, delta, A, B, C, chunk_size: int):
    batch, length, dim = u.shape
    n_chunks = -(-length // chunk_size)
    pad = n_chunks * chunk_size - length
    if pad:
        # delta = 0 makes a step the identity (decay 1, drive 0), so padding leaves the last state exact.
        u, delta, B, C = (jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) for x in (u, delta, B, C))

    def chunks(x):
        return jnp.moveaxis(x.reshape((batch, n_chunks, chunk_size) + x.shape[2:]), 1, 0)

    @jax.checkpoint
    def chunk_step(state, inputs):
        u_c, delta_c, B_c, C_c = inputs
        decay, drive = _transition(delta_c, A, B_c, u_c, dim)
        decay_cum, states = jax.lax.associative_scan(_combine, (decay, drive), axis=1)
        states = states + decay_cum * state[:, None]
        y = jnp.einsum("bldn,bldn->bld", states, expand_groups(C_c, dim))
        return states[:, -1], y

    state0 = jnp.zeros((batch, dim, A.shape[1]), u.dtype)
    last, y = jax.lax.scan(chunk_step, state0, tuple(chunks(x) for x in (u, delta, B, C)))
    y = jnp.moveaxis(y, 0, 1).reshape(batch, n_chunks * chunk_size, dim)
    return y[:, :length], last


_AUTO = {"gpu": "pallas", "cpu": "sequential"}


def _on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def resolve_impl(impl: str) -> str:
    """Map ``auto`` to the fastest implementation on this backend; reject unknown names."""
    if impl not in IMPLS:
        raise ValueError(f"selective_scan: unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
    if impl == "auto":
        return _AUTO.get(jax.default_backend(), "associative")
    return impl


def _check_order(order, groups: int, length: int) -> jax.Array:
    """Shape and dtype always; each row a permutation of 0..L-1 where ``order`` is known (not traced): a repeated or
    out-of-range position would scan some steps twice and others never, or read outside the sequence. A traced
    ``order`` (an argument of a jitted function) cannot be checked: close over it as a constant instead."""
    try:
        rows = np.asarray(order)
    except jax.errors.TracerArrayConversionError:  # an argument of a jitted function: its values are not known yet
        rows = None
    if rows is not None and rows.shape == (groups, length) and np.issubdtype(rows.dtype, np.integer):
        bad = np.flatnonzero((np.sort(rows, axis=1) != np.arange(length)).any(axis=1))
        if bad.size:
            raise ValueError(f"selective_scan: `order` row {bad[0]} is not a permutation of 0..{length - 1} (each "
                             f"position exactly once)")
    order = jnp.asarray(order)
    if order.shape != (groups, length) or not jnp.issubdtype(order.dtype, jnp.integer):
        raise ValueError(f"selective_scan: `order` has shape {order.shape} and dtype {order.dtype}, expected "
                         f"integers of shape (groups, L) = {(groups, length)}")
    return order


def _in_order(x, order, groups: int):
    """(batch, L, G * k) or (batch, L, G, k) with group g's rows taken in the order order[g]."""
    grouped = jnp.asarray(x).reshape(*x.shape[:2], groups, -1)
    return grouped[:, order.T, jnp.arange(groups)[None, :]].reshape(x.shape)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, impl="auto", chunk_size=DEFAULT_CHUNK_SIZE, order=None, sum_groups=False):
    """Selective scan with mamba_ssm ``selective_scan_ref`` semantics, (batch, length, channels) layout.

    Args:
      u, delta: (batch, L, D) input and time step; or u (batch, L, D / G) with grouped B and C, one input shared by
        the G groups: channel g * D / G + j reads u[..., j] (SS2D's K directions over one map; the Pallas kernel
        reads it in place, the others tile it).
      A: (D, N) real state matrix (negative for a stable scan).
      B, C: (batch, L, N), or grouped (batch, L, G, N) with G dividing D.
      D: optional (D,) skip; z: optional (batch, L, D) SiLU gate; delta_bias: optional (D,).
      delta_softplus: apply softplus to delta (+ bias).
      return_last_state: also return the final state (batch, D, N), float32 (float64 for float64 inputs, but from
        ``pallas``).
      impl: one of ``IMPLS``; chunk_size: steps per chunk for ``chunked``.
      order: optional (G, L) integers, each row a permutation of 0..L-1: group g is scanned in the order
        order[g] (module docstring). Checked where its values are known: under ``jax.jit`` close over it (a NumPy
        array, e.g. from ``scan_orders``) rather than pass it as an argument, which goes unchecked.
      sum_groups: return y summed over the G groups of B and C, (batch, L, D / G): channel j is the sum of the
        groups' channels g * D / G + j, added at the arithmetic's precision (SS2D's merge of its K directions).
        The Pallas backward then reads y's gradient as it comes, one group wide, not broadcast to every group.

    Returns:
      y (batch, L, D) in u's dtype (D / G channels with ``sum_groups``), or (y, last_state).
    """
    impl = resolve_impl(impl)
    x = validate_inputs(u, delta, A, B, C, D, z, delta_bias)
    groups = x.B.shape[2]
    if 0 in (x.u.shape[0], x.u.shape[1]):  # no row or no step: nothing to scan, the state stays zero
        last = jnp.zeros((x.u.shape[0], x.delta.shape[2], x.A.shape[1]), compute_dtype(x.u.dtype))
        y = jnp.zeros((*x.delta.shape[:2], x.delta.shape[2] // groups if sum_groups else x.delta.shape[2]),
                      x.u.dtype)
        return (y, last) if return_last_state else y
    if order is not None:
        order = _check_order(order, groups, x.u.shape[1])
    if impl == "pallas":
        from kernels.selective_scan import selective_scan_pallas

        return selective_scan_pallas(*x, delta_softplus=delta_softplus, return_last_state=return_last_state,
                                     interpret=not _on_gpu(), order=order, sum_groups=sum_groups)
    if x.u.shape != x.delta.shape:  # a u shared by the groups, as the kernel reads it: channel g * D/G + j is u[j]
        x = x._replace(u=jnp.tile(x.u, (1, 1, groups)))
    if order is not None:
        x = x._replace(**{k: _in_order(getattr(x, k), order, groups) for k in ("u", "delta", "B", "C", "z")
                          if getattr(x, k) is not None})
    if impl == "chunked":
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"selective_scan: `chunk_size` is {chunk_size!r}, expected a positive int")
        chunk_size = int(chunk_size)  # a NumPy integer (a value read from an array, a sweep's grid) too
    dtype = compute_dtype(x.u.dtype)
    delta_c = discretize_delta(x.delta, x.delta_bias, delta_softplus, dtype)
    args = (x.u.astype(dtype), delta_c, x.A.astype(dtype), x.B.astype(dtype), x.C.astype(dtype))
    if impl == "sequential":
        y, last = _scan_sequential(*args)
    elif impl == "associative":
        y, last = _scan_associative(*args)
    else:
        y, last = _scan_chunked(*args, chunk_size=chunk_size)
    out = finish_output(y, x.u, x.D, x.z, x.u.dtype)
    if order is not None:
        out = _in_order(out, jnp.argsort(order, axis=1), groups)
    if sum_groups:
        out = group_sum(out, groups, dtype)
    return (out, last) if return_last_state else out

