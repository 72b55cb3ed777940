"""The ``split`` design (sequence cut into segments walked by separate programs, ``kernels/selective_scan/split.py``) in
interpret mode: y and the last state against the float64 NumPy recurrence (relative error 1e-5), every gradient against
the sequential scan's (1e-4), with several segments, L not a multiple of the segment, and one segment (the serial
kernels alone), with loads issued a chunk ahead (``prefetch_rows``, the default), in their chunk, or hoisted
(``hoist_loads``), the gate after the kernels, in them (``gate_in_kernel=True``) or in the forward walk when no gradient
is taken (``"forward"``, the default), and with delta discretised once outside the kernels (``False``), in each of them
(``True``), in the forward kernels only (``"forward"``) or in them when no gradient is taken (``"inference"``, the
default for float32), the chain over segments as one kernel (the default) or in XLA (``chain_in_kernel=False``), the
forward kernels with channel blocks of their own (``block_d=(forward, backward)``), and the walks that load rows ahead
taking two chunks an iteration (``pair_chunks``, the default: 4 chunks a segment; 1, the loop empty and the chunk after
it; one segment of 3 chunks) or one
(``pair_chunks=False``), where the segment-state kernel loads two chunks ahead, three chunks an iteration (4 chunks a
segment: one iteration and a chunk after it; 8: two and two after; 2: none and two; 1: none and one), and with the
decays of the segment-state kernel and the forward walk from the FMA-pipe polynomial (``poly_exp``).
Jitted, so each case compiles once (interpret mode's cost is compiling the kernel bodies)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.selective_scan import selective_scan_pallas
from kernels.selective_scan.common import Layout
from kernels.selective_scan.split import default_segment, layout
from ssm_jax.ssm import selective_scan as ssm_scan
from tests.kernels.test_selective_scan_pallas import (ALL_OPTIONS, assert_forward_matches_reference, make_inputs,
                                                     rel_err)

# (batch, length, dim, groups, d_state), options, kernel block sizes (chunk: steps per segment)
CASES = [
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=2), id="all-options-groups-6-segments-odd-L"),
    pytest.param((1, 6, 2, 1, 2), {}, dict(chunk=2), id="plain-3-segments"),
    pytest.param((1, 5, 2, 1, 2), ALL_OPTIONS, dict(chunk=8), id="all-options-one-segment-serial-path"),
    pytest.param((1, 11, 4, 1, 3), ALL_OPTIONS, dict(chunk=4, unroll=2), id="all-options-checkpoint-every-2-steps"),
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=4, unroll=2, hoist_loads=True),
                 id="all-options-loads-hoisted"),
    pytest.param((1, 5, 2, 1, 2), ALL_OPTIONS, dict(chunk=8, hoist_loads=True), id="one-segment-loads-hoisted"),
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=4, unroll=2, prefetch_rows=False),
                 id="all-options-loads-in-their-chunk"),
    pytest.param((1, 11, 4, 1, 3), ALL_OPTIONS, dict(chunk=16, unroll=4, prefetch_rows=True),
                 id="one-segment-loads-a-chunk-ahead"),
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=4, gate_in_kernel=True),
                 id="all-options-gate-in-the-kernels"),
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=4, gate_in_kernel=False),
                 id="all-options-gate-after-the-kernels"),
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=4, delta_in_kernel=True),
                 id="all-options-delta-discretised-in-kernel"),
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=4, delta_in_kernel="forward"),
                 id="all-options-delta-discretised-in-forward-kernels"),
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=4, delta_in_kernel=False),
                 id="all-options-delta-discretised-outside"),
    pytest.param((1, 11, 4, 1, 3), dict(D=True, delta_bias=True), dict(chunk=4), id="bias-without-softplus"),
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=2, chain_in_kernel=False),
                 id="all-options-xla-chain-6-segments"),
    pytest.param((2, 11, 12, 2, 5), ALL_OPTIONS, dict(block_d=(4, 2), chunk=2), id="all-options-wider-forward-blocks"),
    pytest.param((1, 11, 8, 1, 3), ALL_OPTIONS, dict(block_d=(2, 8), chunk=16), id="one-segment-narrower-forward"),
    pytest.param((2, 16, 8, 2, 4), ALL_OPTIONS, dict(block_d=2, chunk=4, unroll=2), id="all-options-even-no-masks"),
    pytest.param((1, 8, 4, 1, 4), ALL_OPTIONS, dict(chunk=8), id="one-segment-even-no-masks"),
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=8, unroll=2, pair_chunks=True),
                 id="all-options-two-chunks-an-iteration"),
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=2, unroll=2, pair_chunks=True),
                 id="all-options-one-chunk-a-segment-paired"),
    pytest.param((1, 11, 4, 1, 3), ALL_OPTIONS, dict(chunk=16, unroll=4, pair_chunks=True),
                 id="one-segment-three-chunks-paired"),
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=8, unroll=2, pair_chunks=False),
                 id="all-options-one-chunk-an-iteration"),
    pytest.param((1, 40, 4, 1, 3), ALL_OPTIONS, dict(chunk=16, unroll=2), id="all-options-eight-chunks-a-segment"),
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=4, poly_exp=(1, 2)),
                 id="all-options-polynomial-decays"),
]


# The default run takes the gradients of the default walk (several segments, one, one chunk a segment) and of the
# chain in XLA; each other option's gradient case is in the slow run (each compiles its kernels for 4-9 s here).
GRADIENTS_BY_DEFAULT = {"all-options-groups-6-segments-odd-L", "plain-3-segments",
                        "all-options-one-segment-serial-path", "all-options-delta-discretised-outside",
                        "all-options-one-chunk-a-segment-paired", "one-segment-three-chunks-paired",
                        "all-options-xla-chain-6-segments"}
GRADIENT_CASES = [pytest.param(*case.values, id=case.id,
                               marks=() if case.id in GRADIENTS_BY_DEFAULT else pytest.mark.slow) for case in CASES]


def scan(impl, x, opts, blocks):
    kw = dict(delta_softplus=opts.get("delta_softplus", False), return_last_state=opts.get("return_last_state", False))
    if impl == "split":
        return selective_scan_pallas(**x, **kw, interpret=True, design="split", **blocks)
    return ssm_scan(**x, **kw, impl="sequential")


@pytest.mark.parametrize("shape,opts,blocks", CASES)
def test_forward_matches_float64_reference(shape, opts, blocks):
    x = make_inputs(0, *shape, **opts)
    assert_forward_matches_reference(jax.jit(lambda x: scan("split", x, opts, blocks))(x), x, opts)


@pytest.mark.parametrize("shape,opts,blocks", GRADIENT_CASES)
def test_gradients_match_sequential_scan(shape, opts, blocks):
    """The differentiated forward's outputs (it also writes checkpoints) and every input's gradient."""
    x = make_inputs(2, *shape, **opts)  # absent options stay None: empty pytrees to jax.vjp
    key_y, key_s = jax.random.split(jax.random.PRNGKey(3))
    w_y = jax.random.normal(key_y, x["u"].shape)
    w_s = jax.random.normal(key_s, (shape[0], shape[2], shape[4]))
    cotangent = (w_y, w_s) if opts.get("return_last_state") else w_y

    def outputs_and_grads(impl):
        def run(x):
            out, vjp = jax.vjp(lambda x: scan(impl, x, opts, blocks), x)
            return out, vjp(cotangent)[0]
        return jax.jit(run)(x)

    (out, got), (out_ref, want) = outputs_and_grads("split"), outputs_and_grads("sequential")
    for o, o_ref in zip(jax.tree.leaves(out), jax.tree.leaves(out_ref)):
        assert rel_err(o, o_ref) < 1e-5
    for name in (k for k, v in x.items() if v is not None):
        assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype, name
        assert rel_err(got[name], want[name]) < 1e-4, name


def test_layout_segments():
    """chunk is the segment length (capped at L rounded up to a power of two), walked 16 steps at a time;
    a sequence of one segment gets the serial layout."""
    def split(length, chunk):
        return layout(Layout(batch=2, length=length, dim=768, groups=1, d_state=16, block_d=32, chunk=chunk),
                      unroll=16)
    long = split(16384, 256)
    assert (long.segment, long.chunk, long.n_segments, long.program_chunks, long.grid) == (256, 16, 64, 16, (2, 24, 64))
    odd = split(11, 4)
    assert (odd.segment, odd.chunk, odd.n_segments, odd.n_chunks) == (4, 4, 3, 3)
    assert layout(Layout(batch=1, length=64, dim=8, groups=1, d_state=4, block_d=8, chunk=32), unroll=8).chunk == 8
    with pytest.raises(ValueError, match="unroll=3 must be a power of two"):
        layout(Layout(batch=1, length=64, dim=8, groups=1, d_state=4, block_d=8, chunk=32), unroll=3)
    short = split(11, 256)  # one segment: the serial layout, no summaries
    assert (short.segment, short.chunk, short.n_segments, short.n_chunks, short.grid) == (0, 16, 1, 1, (2, 24))


def test_even_layouts_are_recognised():
    """The ``even-no-masks`` cases above run without masks, the odd ones with every kind; the benchmark shapes
    vmamba-64x64 (4,096 steps, 32 segments) and mm-tiny-56 (one segment of whole chunks) need none, vim-s (3,136
    steps in 128-step segments) keeps the step mask."""
    def flags(lay):
        return lay.even_channels, lay.even_state, lay.even_steps

    assert flags(layout(Layout(2, 16, 8, 2, 4, block_d=2, chunk=4), unroll=2)) == (True, True, True)
    assert flags(layout(Layout(1, 8, 4, 1, 4, block_d=4, chunk=8))) == (True, True, True)
    assert flags(layout(Layout(2, 11, 6, 2, 5, block_d=2, chunk=2))) == (False, False, False)
    assert flags(auto_layout(8, 4096, 192, groups=1)) == (True, True, True)
    assert flags(auto_layout(64, 3136, 768, groups=4)) == (True, True, True)
    assert flags(auto_layout(32, 3136, 384, groups=1)) == (True, True, False)


def auto_layout(rows: int, length: int, dim: int, groups: int = 1) -> Layout:
    """The layout ``auto`` picks for 16-channel blocks and N = 16: ``default_segment``, no ``unroll``."""
    lay = Layout(rows, length, dim, groups, 16, block_d=16, chunk=1)
    return layout(dataclasses.replace(lay, chunk=default_segment(lay)))


@pytest.mark.parametrize("rows, length, dim, programs, unroll", [
    (32, 3136, 384, 19200, 2),  # vim-s: 768 (row, block) programs x 25 segments of 128 steps
    (8, 4096, 768, 12288, 2),  # mamba-768
    (512, 1024, 192, 6144, 4),  # 8-dir (64 images x 8 directions): a full grid, one segment
    (2, 16384, 768, 12288, 2),  # long
    (8, 4096, 192, 3072, 2),  # vmamba-64x64
    (64, 3136, 768, 3072, 4),  # mm-tiny-56 (in place, 4 groups): a full grid, one segment
    (16, 4096, 1024, 32768, 2),  # ad-64 (in place, 8 groups)
    (8, 100, 768, 384, 4),  # a short sequence: one segment
])
def test_default_unroll_is_two_steps_with_segments_four_without(rows, length, dim, programs, unroll):
    """The layout ``auto`` picks (``default_segment``, no ``unroll``): a sequence cut into segments checkpoints
    every 2 steps and one of a single segment every 4, each the faster forward+backward where measured (NOTES.md,
    "Session 13"); the grid is unchanged by it."""
    lay = auto_layout(rows, length, dim)
    assert int(np.prod(lay.grid)) == programs
    assert lay.chunk == unroll


@pytest.mark.parametrize("gate_in_kernel", [True, False], ids=["gate-in-kernel", "gate-outside"])
def test_bfloat16_gradients_keep_the_inputs_dtypes(gate_in_kernel):
    """bf16 activations (the bf16 default: delta discretised in the forward kernels, and outside in float32 for the
    backward): every gradient in its input's dtype, and within bf16 rounding (3e-2) of the float32 sequential
    scan's gradient of the same values. (Differentiated, "forward" runs False's path.)"""
    opts = dict(D=True, z=True, delta_bias=True, delta_softplus=True)
    x = make_inputs(1, 2, 13, 8, 2, 4, dtype=jnp.bfloat16, **opts)
    names = [k for k, v in x.items() if v is not None]
    w = jax.random.normal(jax.random.PRNGKey(5), x["u"].shape)
    blocks = dict(chunk=4, gate_in_kernel=gate_in_kernel)

    def grads(impl, x):
        return jax.jit(jax.grad(lambda x: jnp.sum(scan(impl, x, opts, blocks).astype(jnp.float32) * w)))(x)

    got = grads("split", x)
    want = grads("sequential", jax.tree.map(lambda a: a.astype(jnp.float32), x))
    for name in names:
        assert got[name].dtype == x[name].dtype, name
        assert rel_err(got[name].astype(jnp.float32), want[name]) < 3e-2, name


@pytest.mark.parametrize("gate_in_kernel, gated_by_xla", [(False, (True, True)), (True, (False, False)),
                                                          (1, (False, False)), ("forward", (False, True)),
                                                          (None, (False, True))])
def test_where_the_gate_runs(gate_in_kernel, gated_by_xla):
    """(forward alone, forward+backward): whether XLA applies silu(z) (a ``logistic`` in the program; the kernels'
    sigmoid is ``exp2`` and a reciprocal). "forward", the default (None), gates in the walk only when no gradient is
    taken; 1 means True."""
    opts = dict(D=True, z=True, delta_bias=True, delta_softplus=True)
    x = make_inputs(1, 1, 8, 4, 1, 2, **opts)
    blocks = dict(chunk=4, gate_in_kernel=gate_in_kernel)
    forward = str(jax.make_jaxpr(lambda x: scan("split", x, opts, blocks))(x))
    grad = str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(scan("split", x, opts, blocks))))(x))
    assert ("logistic" in forward, "logistic" in grad) == gated_by_xla


def test_bfloat16_forward_alone_rounds_once_after_the_gate():
    """bf16 inputs with the gate in the forward walk: the forward alone (y rounded once, after the gate) and the
    differentiated forward (y rounded before the gate as well) are both within bf16 rounding (1e-2) of the float32
    sequential scan of the same values, and within two bf16 roundings of each other elementwise."""
    opts = dict(D=True, z=True, delta_bias=True, delta_softplus=True)
    x = make_inputs(4, 2, 13, 8, 2, 4, dtype=jnp.bfloat16, **opts)
    blocks = dict(chunk=4, gate_in_kernel="forward")
    alone = jax.jit(lambda x: scan("split", x, opts, blocks))(x).astype(jnp.float32)
    differentiated = jax.jit(lambda x: jax.vjp(lambda x: scan("split", x, opts, blocks), x)[0])(x)
    differentiated = differentiated.astype(jnp.float32)
    want = scan("sequential", jax.tree.map(lambda a: a.astype(jnp.float32), x), opts, blocks)
    assert rel_err(alone, want) < 1e-2 and rel_err(differentiated, want) < 1e-2
    np.testing.assert_allclose(alone, differentiated, rtol=2 * 2.0 ** -8, atol=1e-6)


def test_an_unknown_gate_placement_is_named():
    x = make_inputs(1, 1, 8, 4, 1, 2, z=True)
    with pytest.raises(ValueError, match="gate_in_kernel='backward', expected None, False, True or 'forward'"):
        scan("split", x, {}, dict(gate_in_kernel="backward"))
