"""``linear_recurrence(a, b, axis, reverse)``: h_t = a_t * h_{t-1} + b_t along one axis of a tile, in parallel.

Inside a Pallas kernel this lowers to one Triton ``tt.scan`` with the combine
(a1, b1), (a2, b2) -> (a1 a2, a2 b1 + b2), so the steps of a time tile are scanned across the threads of a
program instead of one after another (``lax.associative_scan`` itself does not lower to Triton: it is built
from strided slices). Elsewhere (Pallas interpret mode on CPU, plain JAX) it is ``lax.associative_scan`` with
the same combine. Returns (prod of a up to t, h_t), h starting from zero; with ``reverse`` the recurrence runs
from the end: h_t = a_t h_{t+1} + b_t.
"""

from __future__ import annotations

import jax
from jax._src.lib.mlir import ir
from jax.extend import core
from jax.interpreters import mlir

linear_recurrence_p = core.Primitive("linear_recurrence")
linear_recurrence_p.multiple_results = True


def _combine(left, right):
    (a1, b1), (a2, b2) = left, right
    return a1 * a2, a2 * b1 + b2


def _reference(a, b, *, axis: int, reverse: bool):
    return jax.lax.associative_scan(_combine, (a, b), axis=axis, reverse=reverse)


def linear_recurrence(a, b, axis: int = 0, reverse: bool = False):
    """(cumulative product of a, h) with h_t = a_t h_{t-1} + b_t (h_t = a_t h_{t+1} + b_t when reversed)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"linear_recurrence: a {a.shape} {a.dtype} and b {b.shape} {b.dtype} must match")
    return linear_recurrence_p.bind(a, b, axis=axis % a.ndim, reverse=bool(reverse))


linear_recurrence_p.def_impl(lambda a, b, **kw: _reference(a, b, **kw))
linear_recurrence_p.def_abstract_eval(lambda a, b, **kw: (a, b))
mlir.register_lowering(linear_recurrence_p, mlir.lower_fun(_reference, multiple_results=True))


def _triton_lowering(ctx, a, b, *, axis: int, reverse: bool):
    """One ``tt.scan`` over (a, b) whose region computes the combine on scalars."""
    from jax._src.lib.triton import dialect as tt

    scan = tt.ScanOp([a, b], axis, reverse)
    element = ir.RankedTensorType(a.type).element_type
    body = scan.regions[0].blocks.append(element, element, element, element)
    with ir.InsertionPoint(body):
        a1, b1, a2, b2 = body.arguments
        prod = _arith().mulf(a1, a2)
        acc = _arith().addf(_arith().mulf(a2, b1), b2)
        tt.scan_return([prod, acc])
    return list(scan.result)


def _arith():
    from jax._src.lib.mlir.dialects import arith
    return arith


def _register_triton() -> None:
    """Teach Pallas' Triton lowering the primitive (private API: fail loudly if it moved)."""
    try:
        from jax._src.pallas.triton import lowering
        lowering.triton_lowering_rules[linear_recurrence_p] = _triton_lowering
    except (ImportError, AttributeError) as e:  # pragma: no cover - depends on the installed jax
        raise ImportError(f"kernels.selective_scan: this jax ({jax.__version__}) has no Pallas Triton lowering "
                          f"table to register linear_recurrence in: {e}") from e


_register_triton()
