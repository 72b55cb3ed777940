"""The Pallas selective scan's serial design (interpret mode on CPU) against the float64 NumPy recurrence and, for
gradients, against the pure-JAX sequential scan (the split design: test_split.py). Shapes are small: interpret mode
runs the kernel body as XLA ops."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.selective_scan import ops, selective_scan_pallas
from kernels.selective_scan.common import Layout
from ssm_jax.ssm import selective_scan as ssm_scan
from tests.jaxpr_equations import equations
from tests.ssm.reference import rel_err as norm_rel_err
from tests.ssm.reference import selective_scan_numpy

ALL_OPTIONS = dict(D=True, z=True, delta_bias=True, delta_softplus=True, return_last_state=True)


def make_inputs(seed, batch, length, dim, groups, d_state, dtype=jnp.float32, D=False, z=False,
                delta_bias=False, **_):
    """Random inputs in the ranges a Mamba layer sees: A < 0, delta around softplus' knee."""
    k = jax.random.split(jax.random.PRNGKey(seed), 8)
    normal = lambda key, shape, scale=1.0: (scale * jax.random.normal(key, shape)).astype(dtype)
    return dict(
        u=normal(k[0], (batch, length, dim)),
        delta=normal(k[1], (batch, length, dim), 0.5),
        A=-jnp.exp(jax.random.normal(k[2], (dim, d_state))),
        B=normal(k[3], (batch, length, groups, d_state)),
        C=normal(k[4], (batch, length, groups, d_state)),
        D=jax.random.normal(k[5], (dim,)) if D else None,
        z=normal(k[6], (batch, length, dim)) if z else None,
        delta_bias=0.5 * jax.random.normal(k[7], (dim,)) if delta_bias else None,
    )


def rel_err(out, ref):
    """Norm-wise relative error, after checking every element is finite (interpret mode fills unwritten
    output with NaN)."""
    assert np.all(np.isfinite(np.asarray(out, np.float64))), "output has NaN/inf (an element left unwritten?)"
    return norm_rel_err(out, ref)


def run_pallas(x, opts, **blocks):
    return selective_scan_pallas(**x, delta_softplus=opts.get("delta_softplus", False),
                                 return_last_state=opts.get("return_last_state", False), interpret=True,
                                 **blocks)


# (batch, length, dim, groups, d_state), options, kernel block sizes
FORWARD_CASES = [
    pytest.param((2, 16, 8, 1, 4), {}, dict(block_d=4, chunk=4), id="plain-L-multiple-of-chunk"),
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=4), id="all-options-groups-odd-L"),
    pytest.param((1, 37, 5, 1, 16), dict(D=True, delta_bias=True, delta_softplus=True, return_last_state=True),
                 {}, id="default-blocks-odd-D"),
    pytest.param((3, 10, 12, 3, 4), dict(z=True, return_last_state=True), dict(block_d=8, chunk=8),
                 id="group-smaller-than-block"),
    pytest.param((2 * 4, 9, 4, 1, 4), dict(z=True, D=True), dict(chunk=4), id="4-directions-on-batch"),
]


def assert_forward_matches_reference(out, x, opts):
    """A float32 kernel's output (and last state, where asked for) within 1e-5 of the float64 NumPy scan."""
    y_ref, last_ref = selective_scan_numpy(**x, delta_softplus=opts.get("delta_softplus", False))
    if opts.get("return_last_state"):
        out, last = out
        assert last.shape == last_ref.shape and last.dtype == jnp.float32
        assert rel_err(last, last_ref) < 1e-5
    assert out.shape == y_ref.shape and out.dtype == jnp.float32
    assert rel_err(out, y_ref) < 1e-5


@pytest.mark.parametrize("shape,opts,blocks", FORWARD_CASES)
def test_forward_matches_float64_reference(shape, opts, blocks):
    x = make_inputs(0, *shape, **opts)
    assert_forward_matches_reference(run_pallas(x, opts, design="serial", **blocks), x, opts)


def test_bfloat16_inputs():
    x = make_inputs(1, 2, 13, 8, 2, 4, dtype=jnp.bfloat16, **ALL_OPTIONS)
    y, last = run_pallas(x, ALL_OPTIONS, design="serial", block_d=4, chunk=4)
    y_ref, last_ref = selective_scan_numpy(**x, delta_softplus=True)
    assert y.dtype == jnp.bfloat16 and last.dtype == jnp.float32
    assert rel_err(y, y_ref) < 1e-2
    assert rel_err(last, last_ref) < 1e-2


GRAD_CASES = [
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=4), id="all-options-groups-odd-L"),
    pytest.param((1, 8, 6, 3, 4), dict(z=True, delta_softplus=True), dict(block_d=4, chunk=4),
                 id="gate-only-group-smaller-than-block"),
    pytest.param((2, 11, 6, 2, 5), ALL_OPTIONS, dict(block_d=2, chunk=4, delta_in_kernel=True),
                 id="all-options-delta-discretised-in-kernel", marks=pytest.mark.slow),  # ~10 s each here
    pytest.param((2, 11, 8, 2, 5), ALL_OPTIONS, dict(block_d=(4, 2), chunk=4), id="forward-blocks-wider",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("shape,opts,blocks", GRAD_CASES)
def test_gradients_match_sequential_scan(shape, opts, blocks):
    x = make_inputs(2, *shape, **opts)
    names = [k for k, v in x.items() if v is not None]
    key_y, key_s = jax.random.split(jax.random.PRNGKey(3))
    w_y = jax.random.normal(key_y, x["u"].shape)
    w_s = jax.random.normal(key_s, (shape[0], shape[2], shape[4]))
    softplus, last = opts.get("delta_softplus", False), opts.get("return_last_state", False)

    def loss(impl, *arrays):
        kw = dict(x, **dict(zip(names, arrays)))
        if impl == "pallas":
            out = selective_scan_pallas(**kw, delta_softplus=softplus, return_last_state=last, interpret=True,
                                        design="serial", **blocks)
        else:
            out = ssm_scan(**kw, delta_softplus=softplus, return_last_state=last, impl="sequential")
        y, s = out if last else (out, None)
        return jnp.sum(y * w_y) + (jnp.sum(s * w_s) if last else 0.0)

    arrays = [x[k] for k in names]
    argnums = tuple(range(len(names)))
    got = jax.grad(lambda *a: loss("pallas", *a), argnums)(*arrays)
    want = jax.grad(lambda *a: loss("sequential", *a), argnums)(*arrays)
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        assert rel_err(g, w) < 1e-4, name


@pytest.mark.parametrize("grouped", [False, True])
def test_float32_scan_and_gradients_with_x64_enabled(grouped):
    """A script that turns on jax_enable_x64 (for a float64 check elsewhere) keeps float32 scans working: every
    index the kernels build is int32 (a literal 0 became int64 there and dynamic_slice refused the mix)."""
    x = make_inputs(5, 1, 12, 4, 2 if grouped else 1, 3, z=True)
    if not grouped:
        x["B"], x["C"] = x["B"][:, :, 0], x["C"][:, :, 0]

    def loss(impl, u):
        y, last = ssm_scan(**dict(x, u=u), impl=impl, return_last_state=True)
        return jnp.sum(y * y) + jnp.sum(last)

    with jax.enable_x64(True):
        got = jax.value_and_grad(functools.partial(loss, "pallas"))(x["u"])
        want = jax.value_and_grad(functools.partial(loss, "sequential"))(x["u"])
    assert got[1].dtype == jnp.float32
    assert rel_err(got[0], want[0]) < 1e-5 and rel_err(got[1], want[1]) < 1e-4


def test_dispatch_through_selective_scan():
    """impl="pallas" in the public API: ungrouped B, C go through validation into the kernel."""
    x = make_inputs(4, 2, 7, 4, 1, 4, z=True)
    x["B"], x["C"] = x["B"][:, :, 0], x["C"][:, :, 0]
    y = ssm_scan(**x, impl="pallas")
    y_ref = ssm_scan(**x, impl="sequential")
    assert rel_err(y, y_ref) < 1e-5


@pytest.mark.parametrize("design", ("serial", "split"))
def test_lowers_to_triton(design):
    """Forward and backward lower through Pallas' Triton path (no GPU needed to lower for CUDA); ``split``
    (tested for values in test_split.py) with three segments."""
    spec = lambda shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype)
    batch, length, dim, groups, d_state = 2, 40, 96, 1, 16
    args = (spec((batch, length, dim)), spec((batch, length, dim)), spec((dim, d_state), jnp.float32),
            spec((batch, length, groups, d_state)), spec((batch, length, groups, d_state)),
            spec((dim,), jnp.float32), spec((batch, length, dim)), spec((dim,), jnp.float32))

    def loss(*a):
        y, last = selective_scan_pallas(*a, delta_softplus=True, return_last_state=True, interpret=False,
                                        design=design, chunk=16 if design == "split" else None)
        return jnp.sum(y.astype(jnp.float32)) + jnp.sum(last)

    text = jax.jit(jax.grad(loss, tuple(range(8)))).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("triton") >= (4 if design == "split" else 2)  # split: two segment-summary kernels more


def test_polynomial_decays_lower_and_refuse_a_tile_they_cannot_pack():
    """``poly_exp`` compiled for CUDA: a forward whose threads hold 16 decays each (32 channels x 16 states on one
    warp) lowers with the inline assembly; one holding 2 (4 x 16) cannot group them by 8: the default falls back to
    ``ex2`` alone, and an explicit request is refused, naming it."""
    spec = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype)

    def lowered(dim, block_d, poly_exp=(1, 1)):
        args = (spec((1, 64, dim)), spec((1, 64, dim)), spec((dim, 16)), spec((1, 64, 1, 16)), spec((1, 64, 1, 16)),
                None, None, None)
        fn = functools.partial(selective_scan_pallas, delta_softplus=True, return_last_state=False, interpret=False,
                               design="split", chunk=16, block_d=(block_d, 16), num_warps=(1, 1), poly_exp=poly_exp)
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()

    polynomial = "shl.b32 pj, pj, 23;"  # the exponent shift of ``common._exp2_poly_ptx``
    assert polynomial in lowered(64, 32) and polynomial not in lowered(64, 32, poly_exp=0)
    default_fallback = lowered(64, 4, poly_exp=None)  # ex2 alone
    assert "ex2.approx.ftz.f32" in default_fallback and polynomial not in default_fallback
    with pytest.raises(ValueError, match=r"poly_exp=\(1, 1\) needs each thread's decays in groups of 8.*gives 2 a"):
        lowered(64, 4)


def test_polynomial_share_by_default_follows_the_measured_table():
    """Left as None, the share is ``ops.POLY_EXP_BY_ITEMSIZE``'s for the inputs' dtype when compiled and the tile
    packs, and none in interpret mode."""
    lay = Layout(batch=1, length=64, dim=64, groups=1, d_state=16, block_d=32, chunk=16)

    def share(dtype, ptx):
        resolved = ops._with_poly_exp(lay, None, dtype, 1, ptx)
        return resolved.poly_states, resolved.poly_walk

    assert share(jnp.float32, True) == ops.POLY_EXP_BY_ITEMSIZE[4] == (1, 1)
    assert share(jnp.bfloat16, True) == ops.POLY_EXP_BY_ITEMSIZE[2] == (1, 0)
    assert share(jnp.float32, False) == (0, 0)


def test_rejects_bad_poly_exp():
    x = make_inputs(5, 1, 4, 4, 1, 4)
    for bad in (9, -1, (1, 2, 3), 1.5):
        with pytest.raises(ValueError, match="poly_exp=.*expected an int or a pair of ints in 0..8"):
            run_pallas(x, {}, poly_exp=bad)


def test_rejects_block_d_not_power_of_two():
    x = make_inputs(5, 1, 4, 6, 1, 4)
    for block_d in (3, (4, 3), (3, None)):
        with pytest.raises(ValueError, match="power of two"):
            run_pallas(x, {}, block_d=block_d)
    with pytest.raises(ValueError, match="pair"):
        run_pallas(x, {}, block_d=(4, 4, 4))


@pytest.mark.parametrize("design,chunk", [("serial", 0), ("split", 24), ("nope", 4), ("tiled", 64)])
def test_rejects_bad_design_or_chunk(design, chunk):
    x = make_inputs(5, 1, 4, 4, 1, 4)
    with pytest.raises(ValueError, match="chunk|design"):
        run_pallas(x, {}, design=design, chunk=chunk)


def test_rejects_unknown_delta_in_kernel():
    x = make_inputs(5, 1, 4, 4, 1, 4)
    for bad in ("backward", 1):
        with pytest.raises(ValueError, match=f"delta_in_kernel={bad!r}, expected None, False, True, 'forward' or "
                                             "'inference'"):
            run_pallas(x, {}, delta_in_kernel=bad)


@pytest.mark.parametrize("dtype,expected", [(jnp.bfloat16, "forward"), (jnp.float16, "forward"),
                                            (jnp.float32, "inference")])
def test_default_delta_in_kernel_follows_the_dtype(dtype, expected):
    """Left as None: 16-bit inputs discretise delta in the forward kernels, float32 ones in them only when no
    gradient is taken (as measured)."""
    assert ops.default_delta_in_kernel(dtype) == expected


@pytest.mark.parametrize("setting,inside", [(True, {"inference", "forward", "backward"}), (False, set()),
                                            ("forward", {"inference", "forward"}), ("inference", {"inference"})])
def test_which_passes_discretise_delta(setting, inside):
    """Each pass (the undifferentiated forward, the differentiated forward, the backward) reads delta as given and
    applies softplus where ``delta_in_kernel`` puts it in the kernels, and softplus(delta + bias) in float32
    otherwise."""
    x = make_inputs(5, 1, 4, 4, 1, 4, dtype=jnp.bfloat16, **ALL_OPTIONS)
    given = ops._inputs(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], None)
    for direction in ("inference", "forward", "backward"):
        kernel, softplus = ops._kernel_inputs(given, True, ops.Tuning(delta_in_kernel=setting), direction)
        if direction in inside:
            assert softplus and kernel["delta"] is given["delta"] and "delta_bias" in kernel, direction
        else:
            assert not softplus and kernel["delta"].dtype == jnp.float32 and "delta_bias" not in kernel, direction
            want = jax.nn.softplus(given["delta"].astype(jnp.float32) + given["delta_bias"])
            np.testing.assert_allclose(kernel["delta"], want, rtol=1e-6)


def test_unroll_belongs_to_the_split_design():
    x = make_inputs(5, 1, 4, 4, 1, 4)
    with pytest.raises(ValueError, match="unroll is a setting of the split design"):
        run_pallas(x, {}, design="serial", unroll=4)


def test_chain_kernel_belongs_to_the_split_design():
    x = make_inputs(5, 1, 4, 4, 1, 4)
    with pytest.raises(ValueError, match="chain_in_kernel is a setting of the split design"):
        run_pallas(x, {}, design="serial", chain_in_kernel=True)


def test_auto_design_is_split_with_its_measured_blocks():
    """auto: split, one warp a program, 16 channels a backward program, 128-step segments while its (rows, channel
    blocks) grid has fewer than split.FULL_GRID programs; a short sequence (a 7x7 stage) or a full grid
    (MemoryMamba-tiny's first stage at batch 64: 64 x 48 programs) gets the serial layout, one program per (row,
    channel block). The forward takes 32 channels, with the same segments and checkpoints, unless that leaves it
    fewer than split.WIDE_FORWARD_GRID programs (the 7x7 stage, and ad-32's 16 x 64); without a gradient
    ("inference"), fewer than split.WIDE_INFERENCE_GRID (the 7x7 stage only). Loads are hoisted in the forward
    kernels only; an order's positions are loaded a chunk ahead unless asked not to."""
    from kernels.selective_scan import split
    from kernels.selective_scan.ops import Tuning, _design
    for rows, length, dim, segment, grid, forward_block, inference_block in (
            (32, 3136, 384, 128, (32, 24, 25), 32, 32), (32, 49, 384, 0, (32, 24), 16, 16),
            (64, 3136, 768, 0, (64, 48), 32, 32), (42, 3136, 768, 128, (42, 48, 25), 32, 32),
            (16, 1024, 2048, 0, (16, 128), 16, 32)):
        u, B, A = jnp.zeros((rows, length, dim)), jnp.zeros((rows, length, 1, 16)), jnp.zeros((dim, 16))
        fwd, bwd, lay, fwd_warps, bwd_warps = _design(Tuning(), u, B, A, direction="backward")
        assert (fwd, bwd) == (split.forward, split.backward)
        assert (lay.block_d, lay.segment, lay.grid, fwd_warps, bwd_warps) == (16, segment, grid, 1, 1)
        forward = _design(Tuning(), u, B, A)[2]
        assert (forward.block_d, forward.segment, forward.chunk) == (forward_block, lay.segment, lay.chunk)
        assert forward.hoist_loads and not lay.hoist_loads and forward.chain_kernel
        inference = _design(Tuning(), u, B, A, direction="inference")[2]
        assert inference == dataclasses.replace(forward, block_d=inference_block)
    assert _design(Tuning(chunk=256), u, B, A)[2].segment == 256  # an explicit segment length is kept
    for hoist in (False, True):
        assert {_design(Tuning(hoist_loads=hoist), u, B, A, direction=d)[2].hoist_loads
                for d in ("inference", "forward", "backward")} == {hoist}
    assert _design(Tuning(), u, B, A)[2].prefetch_order
    assert not _design(Tuning(prefetch_order=False), u, B, A)[2].prefetch_order
    # A forward block of its own changes neither the segments nor the checkpoints, which both directions share.
    u, B, A = jnp.zeros((42, 3136, 768)), jnp.zeros((42, 3136, 1, 16)), jnp.zeros((768, 16))
    fwd_lay, bwd_lay = (_design(Tuning(block_d=(64, None)), u, B, A, direction=d)[2] for d in ("forward", "backward"))
    assert _design(Tuning(block_d=(8, None)), u[:4, :49], B[:4, :49], A)[2].block_d == 8  # asked: kept
    assert (fwd_lay.block_d, bwd_lay.block_d) == (64, 16)
    assert (fwd_lay.segment, fwd_lay.chunk) == (bwd_lay.segment, bwd_lay.chunk) == (128, 2)


def test_a_two_byte_one_segment_inference_takes_64_channels_where_measured_faster():
    """split.WIDEST_INFERENCE: only a forward without gradient, bf16 or fp16, whole sequence in one segment, u a row
    per batch row (not in place), 64 dividing a group's channels and leaving split.WIDE_FORWARD_GRID programs: 8-dir's
    shape. Read from the layouts alone (shapes, no arrays)."""
    from kernels.selective_scan import split
    from kernels.selective_scan.ops import Tuning, _design

    def inference_block(rows, length, dim, dtype=jnp.bfloat16, groups=1, in_place=False, direction="inference",
                        tuning=Tuning()):
        spec = jax.ShapeDtypeStruct
        lay = _design(tuning, spec((rows, length, dim), dtype), spec((rows, length, groups, 16), dtype),
                      spec((dim, 16), jnp.float32), direction=direction, in_place=in_place)[2]
        return lay.block_d

    assert inference_block(512, 1024, 192) == inference_block(512, 1024, 192, jnp.float16) == 64  # 1,536 programs
    assert inference_block(256, 1024, 192) == 32  # 768 programs at 64
    assert inference_block(512, 1024, 192, jnp.float32) == 32
    assert inference_block(512, 1024, 192, direction="forward") == 32  # differentiated: training's, not measured
    assert inference_block(512, 1024, 192, in_place=True) == 32
    assert inference_block(512, 1024, 4 * 96, groups=4) == 32  # 64 would leave half of every second block masked
    assert inference_block(32, 3136, 384) == 32  # segmented (vim-s)
    assert inference_block(512, 1024, 192, tuning=Tuning(block_d=(32, None))) == 32  # asked: kept
    assert inference_block(512, 1024, 192, tuning=Tuning(design="serial")) == 32
    assert split.WIDEST_INFERENCE == 64


def test_bfloat16_forward_at_64_channels_matches_the_float64_reference():
    """The 64-channel programs the rule above picks, interpreted: one segment, bf16 inputs, all options."""
    x = make_inputs(4, 2, 13, 128, 1, 16, dtype=jnp.bfloat16, **ALL_OPTIONS)
    y, last = run_pallas(x, ALL_OPTIONS, design="split", block_d=(64, 16))
    y_ref, last_ref = selective_scan_numpy(**x, delta_softplus=True)
    assert y.dtype == jnp.bfloat16 and rel_err(y, y_ref) < 1e-2 and rel_err(last, last_ref) < 1e-2


def _kernel_grids(jaxpr) -> list[tuple]:
    """The grid of every Pallas kernel in a jaxpr, nested jaxprs included, in order."""
    return [tuple(eqn.params["grid_mapping"].grid) for eqn in equations(jaxpr) if eqn.primitive.name == "pallas_call"]


def test_only_a_forward_without_gradient_takes_the_inference_width():
    """ad-32's scan (16 rows, 2,048 channels, one segment): at 32 channels its forward grid would have 1,024
    programs, enough without a gradient (split.WIDE_INFERENCE_GRID), too few for the differentiated forward
    (split.WIDE_FORWARD_GRID), which runs 16 channels like the backward."""
    rows, length, dim, n = 16, 1024, 2048, 16
    shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((rows, length, dim), (rows, length, dim), (dim, n),
                                                              (rows, length, 1, n), (rows, length, 1, n))]

    def scan(u, delta, A, B, C):
        return selective_scan_pallas(u, delta, A, B, C, None, None, None, delta_softplus=False,
                                     return_last_state=False, interpret=True)

    assert _kernel_grids(jax.make_jaxpr(scan)(*shapes).jaxpr) == [(rows, dim // 32)]
    gradient = jax.make_jaxpr(jax.grad(lambda *x: scan(*x).sum()))(*shapes).jaxpr
    assert _kernel_grids(gradient) == [(rows, dim // 16)] * 2  # forward, then backward

def _softplus_passes(jaxpr) -> int:
    """log1p equations outside the kernels (jax.nn.softplus computes one; the kernels' own are not counted)."""
    return sum(eqn.primitive.name == "log1p" for eqn in equations(jaxpr))


@pytest.mark.parametrize("dtype,delta_in_kernel,keeps", [(jnp.float32, None, True), (jnp.float32, False, True),
                                                         (jnp.bfloat16, False, False),
                                                         (jnp.float32, "forward", False)])
def test_backward_reuses_the_forwards_discretised_delta(dtype, delta_in_kernel, keeps):
    """float32 delta discretised outside the kernels in both halves of a differentiated scan: the forward's
    softplus(delta + bias) is the backward's residual, so XLA computes it once per step, not twice; a bfloat16
    delta is kept as given (its float32 discretisation would take twice its bytes) and recomputed, and
    ``delta_in_kernel="forward"`` leaves the forward nothing to keep."""
    x = make_inputs(6, 1, 8, 4, 1, 4, dtype=dtype, **ALL_OPTIONS)
    given = ops._inputs(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], None)
    tuning = ops.Tuning(delta_in_kernel=ops.default_delta_in_kernel(dtype) if delta_in_kernel is None
                        else delta_in_kernel)
    assert ops._keeps_discretised(given, True, tuning) == keeps

    def loss(delta):
        y = selective_scan_pallas(**dict(x, delta=delta), delta_softplus=True, return_last_state=False,
                                  interpret=True, delta_in_kernel=delta_in_kernel)
        return jnp.sum(y.astype(jnp.float32))

    passes = _softplus_passes(jax.make_jaxpr(jax.grad(loss))(x["delta"]).jaxpr)
    assert passes == (1 if keeps or delta_in_kernel == "forward" else 2)
