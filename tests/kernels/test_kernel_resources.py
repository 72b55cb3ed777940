"""benchmarks/kernel_resources.py without triton: the kernels it captures from the CUDA lowering, its reading of
``ptxas -v`` and the occupancy it derives from registers."""

import dataclasses
from collections import Counter

import jax.numpy as jnp
import pytest

from benchmarks.kernel_resources import (count_ptx, loop_bounds_us, lowered_kernels, main_loop, parse_ptxas,
                                         programs_per_sm)
from benchmarks.scan import SHAPES
from benchmarks.kernel_configs import parse_config
from kernels.selective_scan import ops

PTXAS = """ptxas info    : Compiling entry function 'selective_scan_bwd' for 'sm_90a'
ptxas info    : Function properties for selective_scan_bwd
    8 bytes stack frame, 800 bytes spill stores, 836 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers"""


@pytest.mark.slow  # the kernels lowered for the GPU on the CPU: in the slow run, keeping CI's run short
def test_captures_each_kernel_with_its_warps():
    """split lowers six kernels for forward+backward: summaries, the chain (one warp) and walks, forward warps then
    backward warps; four with the chain left to XLA."""
    shape = next(s for s in SHAPES if s.name == "mamba-768")
    kernels = lowered_kernels(parse_config("split:16:256:2:4:8"), shape)
    assert [(name, warps) for name, warps, _, _ in kernels] == [
        ("selective_scan_split_states", 2), ("selective_scan_split_chain", 1), ("selective_scan_fwd", 2),
        ("selective_scan_split_adjoints", 4), ("selective_scan_split_chain", 1), ("selective_scan_bwd", 4)]
    assert all(text.lstrip().startswith(f"module @{name}") and "tt.func" in text for name, _, text, _ in kernels)
    unchained = lowered_kernels(parse_config("split:16:256:2:4:8::::::0"), shape)  # the chain in XLA
    assert [name for name, _, _, _ in unchained] == [
        "selective_scan_split_states", "selective_scan_fwd", "selective_scan_split_adjoints", "selective_scan_bwd"]


def test_reads_ptxas_and_derives_occupancy():
    assert parse_ptxas(PTXAS) == {"registers": 255, "spill_stores": 800, "spill_loads": 836, "stack": 8,
                                  "barriers": 1}
    assert programs_per_sm(255, 2) == 4     # 256 regs x 64 threads = 16,384 of 65,536
    assert programs_per_sm(164, 2) == 6     # rounded up to 168 a thread: 10,752 a program
    assert programs_per_sm(40, 2) == 25
    assert programs_per_sm(16, 1) == 32     # the 32-program limit, not registers or warps
    assert programs_per_sm(16, 4) == 16     # the 64-warp limit


def test_counts_barriers_and_shuffles_in_ptx():
    ptx = """
    .reg .f32 %f<4>;
    shfl.sync.bfly.b32 %r1, %r2, 16, 31, -1;
    bar.sync 0;
$L__BB0_1:
    st.shared.f32 [%r3], %f1;
    barrier.sync 1;
    @%p1 ex2.approx.ftz.f32 %r8, %r9;
    shfl.sync.bfly.b32 %r4, %r5, 8, 31, -1;
    shfl.sync.idx.b32 %r6, %r7, 0, 31, -1;
    // bar.synchronise is not an instruction
    """
    assert count_ptx(ptx) == {"instructions": 7, "ex2": 1, "bar_sync": 2, "shfl": 3}


def test_compiled_kernels_take_exp2_and_multiply_adds_as_single_ptx_instructions():
    """XLA compiles Triton kernels with contraction off and denormals kept (``Layout.ptx``): every split kernel
    lowered for CUDA carries its exponentials as ``ex2.approx.ftz`` and its recurrence as ``fma``, with no
    libdevice exp2 left; interpret mode (no PTX) keeps the plain jnp ops."""
    shape = next(s for s in SHAPES if s.name == "vmamba-64x64")
    for name, _, text, _ in lowered_kernels(parse_config("split:16:0:1:1:2"), shape):
        assert "ex2.approx.ftz.f32" in text and "fma.rn.f32" in text, name
        assert "exp2" not in text.replace("ex2.approx.ftz.f32", ""), name
    assert not ops._ptx(interpret=True)


SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   FMUL R2, R3, R4 ;
        /*0020*/                   MUFU.EX2 R2, R2 ;
.L_x_1:
        /*0030*/              @!P5 FMUL R2, R2, R2 ;
        /*0040*/                   FFMA R5, R2, R5, R6 ;
        /*0050*/               @P0 BRA `(.L_x_1) ;
        /*0060*/                   LDG.E R3, desc[UR4][R8.64] ;
        /*0070*/               @P1 BRA `(.L_x_0) ;
        /*0080*/                   BRA `(.L_x_2);
.L_x_2:
        /*0090*/                   EXIT ;
"""


def test_main_loop_is_the_longest_branch_back_with_its_opcodes():
    """The loop from .L_x_0 (7 instructions, the inner one nested in it) wins over the inner loop (3) and the
    forward branch to .L_x_2 (not a loop); predicates and modifiers are dropped."""
    assert main_loop(SASS) == {"FMUL": 2, "MUFU": 1, "FFMA": 1, "BRA": 2, "LDG": 1}
    assert main_loop(SASS.replace("`(.L_x_0)", "`(.L_x_2)")) == {"FMUL": 1, "FFMA": 1, "BRA": 1}
    assert main_loop("") == {}


def test_softplus_and_gate_in_the_kernels_compile_to_special_function_instructions():
    """With delta discretised and the gate applied in the kernels (bfloat16 inputs), the softplus takes
    ``lg2.approx`` and the sigmoids ``rcp.approx``, with no libdevice logarithm left in any kernel."""
    shape = next(s for s in SHAPES if s.name == "vmamba-64x64")
    kernels = dict((name, text) for name, _, text, _ in
                   lowered_kernels(parse_config("split:16:0:1:1:2::0:::1"), shape, jnp.bfloat16))
    assert all("bf16" in kernels[k] for k in ("selective_scan_split_states", "selective_scan_fwd"))
    for name in ("selective_scan_split_states", "selective_scan_fwd", "selective_scan_split_adjoints",
                 "selective_scan_bwd"):
        assert "lg2.approx.ftz.f32" in kernels[name] and "math.log" not in kernels[name], name
    for name in ("selective_scan_fwd", "selective_scan_split_adjoints", "selective_scan_bwd"):
        assert "rcp.approx.ftz.f32" in kernels[name], name


@pytest.fixture(scope="module")
def vmamba_forward():
    """{name: (warps, Layout)} of the default config's inference forward on vmamba-64x64, lowered once."""
    shape = next(s for s in SHAPES if s.name == "vmamba-64x64")
    return {name: (warps, lay) for name, warps, _, lay in
            lowered_kernels(parse_config("split:32/16:0:1:1"), shape, forward_only=True)}


def test_each_kernel_comes_with_the_layout_it_was_built_with(vmamba_forward):
    """The forward of inference on vmamba-64x64 (8 rows, 4,096 steps, 192 channels): the states kernel and the walk
    take the forward's 32-channel blocks, 128-step segments and 2-step chunks, so each program runs 64 loop
    iterations over 8 x 6 x 32 programs."""
    for name in ("selective_scan_split_states", "selective_scan_fwd"):
        warps, lay = vmamba_forward[name]
        assert (warps, lay.block_d, lay.segment, lay.chunk, lay.program_chunks) == (1, 32, 128, 2, 64), name
        assert lay.grid == (8, 6, 32), name


def test_loop_bounds_count_issue_and_mufu_clocks_over_every_warp(vmamba_forward):
    """One warp-iteration of 100 instructions, 20 of them MUFU, issues in 100 scheduler clocks and holds the MUFU
    unit 160: over 8 x 6 x 32 programs of one warp, 64 iterations each, spread on 132 x 4 schedulers at 1.98 GHz."""
    lay = dataclasses.replace(vmamba_forward["selective_scan_fwd"][1], pair_chunks=False)  # one chunk a loop
    iterations_a_scheduler = 8 * 6 * 32 * 64 / (132 * 4)
    bounds = loop_bounds_us(Counter(FMUL=80, MUFU=20), lay, num_warps=1)
    assert abs(bounds["issue"] - iterations_a_scheduler * 100 / 1.98e3) < 1e-9
    assert abs(bounds["mufu"] - iterations_a_scheduler * 160 / 1.98e3) < 1e-9
    assert abs(loop_bounds_us(Counter(FMUL=80, MUFU=20), lay, num_warps=2)["issue"] - 2 * bounds["issue"]) < 1e-9
    assert loop_bounds_us(Counter(), lay, 1) is None and loop_bounds_us(Counter(FMUL=1), None, 1) is None
    paired = dataclasses.replace(lay, pair_chunks=True)  # a loop of two chunks, half as many iterations
    assert paired.loop_chunks == 2
    halved = loop_bounds_us(Counter(FMUL=160, MUFU=40), paired, num_warps=1)
    assert abs(halved["issue"] - bounds["issue"]) < 1e-9 and abs(halved["mufu"] - bounds["mufu"]) < 1e-9
    deeper = dataclasses.replace(paired, prefetch_depth=2)  # loads two chunks ahead: a loop of three chunks
    assert deeper.loop_chunks == 3
    third = loop_bounds_us(Counter(FMUL=240, MUFU=60), deeper, num_warps=1)
    assert abs(third["issue"] - bounds["issue"]) < 1e-9 and abs(third["mufu"] - bounds["mufu"]) < 1e-9


@pytest.mark.slow  # the kernels lowered for the GPU on the CPU: in the slow run, keeping CI's run short
def test_paired_chunks_reach_the_forward_and_summary_walks_only():
    """``pair_chunks`` (config field pair) takes the forward walk and the adjoint summaries to two chunks a loop
    iteration and the segment-state kernel, which loads two chunks ahead, to three; the backward's walk, which loads a
    step ahead inside its chunk, keeps one; without rows loaded ahead, or with pair 0, none pairs, and the default
    pairs."""
    shape = next(s for s in SHAPES if s.name == "vmamba-64x64")
    paired = {n: lay for n, _, _, lay in lowered_kernels(parse_config("split:32/16:0:1:1:::::::::1"), shape)}
    assert paired["selective_scan_fwd"].loop_chunks == 2 and paired["selective_scan_split_states"].loop_chunks == 3
    assert paired["selective_scan_split_adjoints"].loop_chunks == 2 and paired["selective_scan_bwd"].loop_chunks == 1
    unpaired = {n: lay for n, _, _, lay in lowered_kernels(parse_config("split:32/16:0:1:1:::::::::0"), shape)}
    assert {lay.loop_chunks for lay in unpaired.values() if lay is not None} == {1}
    default = {n: lay and lay.loop_chunks for n, _, _, lay in lowered_kernels(parse_config("split:32/16:0:1:1"), shape)}
    assert default == {n: lay and lay.loop_chunks for n, lay in paired.items()}  # ops.PAIR_CHUNKS: on
    unloaded = lowered_kernels(parse_config("split:32/16:0:1:1:::::0::::1"), shape, forward_only=True)
    assert {lay.loop_chunks for _, _, _, lay in unloaded if lay is not None} == {1}
