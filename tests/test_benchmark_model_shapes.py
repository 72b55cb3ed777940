"""benchmarks/scan.py's model shapes: they are the scans MemoryMamba-tiny and MambaAD run (so a timing of them is a
timing of the models' stages), and the in-place inputs they build run through the scan with the orders SS2D uses."""

import argparse

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.scan import (MODEL_SHAPES, SHAPES, SMALL_MODEL_SHAPES, Shape, floor_target, forward_bytes, functions,
                             isolated, make_inputs, measure, print_peer_ratios, print_row, times_floor)
from ssm_jax.models.mambaad import mambaad_model_config
from ssm_jax.models.memorymamba import memorymamba_presets
from ssm_jax.ssm import scan_orders, selective_scan


def test_model_shapes_are_memorymamba_tinys_stages_at_224_px():
    tiny = memorymamba_presets["tiny"]
    side, expected = 224 // 4, []
    for dim in tiny["dims"]:
        expected.append((64, side * side, 4 * 2 * dim, 4))  # batch 64, K=4 directions of d_inner = 2 x dim
        side //= 2
    mm = [(s.batch, s.length, s.dim, s.in_place, s.method) for s in MODEL_SHAPES if s.name.startswith("mm-")]
    assert mm == [(*e, "sweep") for e in expected]


def test_model_shapes_are_mambaads_decoder_stages_at_256_px():
    ad = mambaad_model_config()
    side, expected = 256 // 32, []  # the decoder starts at H/32 and doubles the side each stage
    for dim in ad.decoder_dims:
        expected.append((16, side * side, ad.directions * int(ad.ssm_ratio * dim), ad.directions, ad.scan_method))
        side *= 2
    got = [(s.batch, s.length, s.dim, s.in_place, s.method) for s in MODEL_SHAPES if s.name.startswith("ad-")]
    assert sorted(got) == sorted(expected)


def test_in_place_inputs_have_grouped_b_c_no_gate_sweep_orders_and_u_y_one_direction_wide():
    """As SS2D calls the scan: u (batch, L, d_inner) shared by the K groups, y summed over them (so its cotangent is
    one direction wide too), delta and the parameters K * d_inner wide."""
    shape = SMALL_MODEL_SHAPES[0]
    (u, delta, A, B, C, D, z, bias), cotangent = make_inputs(shape, jnp.float32)
    assert B.shape == C.shape == (shape.rows, shape.length, 4, shape.d_state) and z is None
    assert u.shape == cotangent.shape == (shape.rows, shape.length, shape.dim // 4) == (1, 64, 16)
    assert delta.shape == (1, 64, 64) and A.shape[0] == D.shape[0] == bias.shape[0] == 64
    kwargs = shape.scan_kwargs()
    assert kwargs["sum_groups"] is True
    np.testing.assert_array_equal(kwargs["order"], scan_orders("sweep", 8, 8, 4))
    assert Shape("plain", 1, 64, 8, 4).scan_kwargs() == dict(order=None, sum_groups=False)
    gated = Shape("gated", shape.batch, shape.length, shape.dim, shape.d_state)  # z read, B/C in one group
    act = shape.rows * shape.length * shape.dim * 4
    extra_groups = 2 * shape.rows * shape.length * 3 * shape.d_state * 4  # B and C of 3 more groups
    # gated: u, delta, z read and y written at full width; in place: delta at full width, u and y a quarter of it
    assert forward_bytes(gated, jnp.float32) - forward_bytes(shape, jnp.float32) == 4 * act - (act + 2 * act // 4) \
        - extra_groups


def test_copy_floor_of_vmamba_64x64_counts_each_tensor_once():
    """8 rows x 4,096 steps x 192 channels, d_state 16, one group, gated, fp32: u, delta, z read and y written
    (25,165,824 bytes each), B and C read (2,097,152 each), A, D and delta_bias read (13,824 together)."""
    shape = next(s for s in SHAPES if s.name == "vmamba-64x64")
    assert forward_bytes(shape, jnp.float32) == 4 * 25_165_824 + 2 * 2_097_152 + 13_824
    floor_s = 104_871_424 / 3e12  # 34.96 us at 3,000 GB/s
    assert abs(times_floor(124.2e-6, shape, jnp.float32, 3e12) - 124.2e-6 / floor_s) < 1e-12
    assert abs(times_floor(124.2e-6, shape, jnp.float32, 3e12) - 3.553) < 1e-3


def test_floor_target_needs_ours_within_3x_where_mamba_ssm_is_within_10x():
    """vmamba-64x64 fp32 at 3,000 GB/s has a 34.96 us floor: 3x is 104.9 us, 10x 349.6 us."""
    shape = next(s for s in SHAPES if s.name == "vmamba-64x64")

    def target(ours_s, peer_s, bandwidth=3e12):
        return floor_target(*(times_floor(t, shape, jnp.float32, bandwidth) for t in (ours_s, peer_s)))
    assert target(104.0e-6, 240e-6) == "met"
    assert target(106.0e-6, 240e-6) == "missed"
    assert target(106.0e-6, 350e-6) == "out of scope"
    assert target(106.0e-6, 240e-6, bandwidth=2.9e12) == "met"  # a slower copy lowers the bar


def test_peer_table_prints_mamba_ssms_floor_ratio_and_the_target(capsys):
    shape = next(s for s in SHAPES if s.name == "vmamba-64x64")
    ours = dict(fwd=150e-6, fwd_bwd=600e-6, fwd_batched=120e-6, fwd_bwd_batched=500e-6)
    peer = {"vmamba-64x64": dict(fwd=300e-6, fwd_bwd=900e-6, fwd_batched=240e-6, fwd_bwd_batched=800e-6)}
    print_peer_ratios([("pallas", shape, ours), ("chunked", shape, {"error": "x"})], peer, 3e12, jnp.float32)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "peer/floor" in lines[1] and "3x target" in lines[1]
    cells = lines[2].split()
    assert cells[:2] == ["pallas", "vmamba-64x64"]
    assert cells[-2:] == ["6.9", "missed"]  # 240 us over 34.96 us; 120 us is 3.43x
    assert [float(c) for c in cells[4:6]] == [0.5, round(600 / 900, 2)]


def test_a_row_prints_its_times_and_floor_ratio_or_its_error(capsys):
    shape = next(s for s in SHAPES if s.name == "vmamba-64x64")
    ours = dict(fwd=150e-6, fwd_bwd=600e-6, fwd_batched=120e-6, fwd_bwd_batched=500e-6, peak=2**20)
    print_row(12, "pallas", shape, ours, 3e12, jnp.float32)
    print_row(12, "chunked", shape, {"error": "OOM"}, 3e12, jnp.float32)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["pallas", "vmamba-64x64"]
    assert lines[0].split()[-1] == "3.4"  # 120 us over 34.96 us
    assert lines[1].split()[0] == "chunked" and lines[1].endswith("OOM")


@pytest.mark.slow  # a timed scan and five more; SS2D's in-place scan against gathered directions: tests/nn
def test_in_place_shape_measures_on_cpu_and_matches_the_gathered_scan():
    shape = SMALL_MODEL_SHAPES[0]
    row = measure("chunked", shape, jnp.float32, repeats=1)
    assert row["fwd"] > 0 and row["fwd_bwd"] > 0
    args, _ = make_inputs(shape, jnp.float32)
    in_place = selective_scan(*args, delta_softplus=True, impl="sequential", **shape.scan_kwargs())
    u, delta, A, B, C, D, z, bias = args
    order = np.asarray(shape.order())
    k, d = 4, shape.dim // 4
    ys = []
    for g in range(k):  # each direction gathered from the one u into its own scan, put back in raster order
        take = lambda t: t[:, order[g]]
        y = selective_scan(take(u), take(delta[..., g * d:(g + 1) * d]), A[g * d:(g + 1) * d],
                           take(B[:, :, g]), take(C[:, :, g]), D[g * d:(g + 1) * d], None, bias[g * d:(g + 1) * d],
                           delta_softplus=True, impl="sequential")
        ys.append(np.asarray(y)[:, np.argsort(order[g])])
    np.testing.assert_allclose(in_place, np.sum(ys, axis=0), rtol=1e-5, atol=1e-5)  # the directions summed


def test_a_model_shape_is_measured_in_its_own_process():
    """On the GPU every row runs in a child process (``isolated``), which is told the shape's name and not the
    parent's ``--shapes``: it must find the model shapes too (the first GPU run of them failed with a KeyError)."""
    args = argparse.Namespace(dtype="float32", repeats=1, small=True)
    row = isolated(f"chunked@{SMALL_MODEL_SHAPES[0].name}", args)
    assert "error" not in row, row
    assert row["fwd"] > 0 and row["fwd_bwd_batched"] > 0


def test_a_pallas_config_row_runs_that_kernel_config():
    """``--pallas-configs``: an impl ``pallas:<config>`` lowers the Pallas kernels with that config's settings (here
    the gate outside the kernels: its products in XLA) for CUDA, on a gated shape
    and an in-place one, without a GPU."""
    gated = Shape("gated", 1, 64, 32, 4)
    args, _ = make_inputs(gated, jnp.float32)

    def lowered(impl, shape, args):
        forward, _ = functions(impl, **shape.scan_kwargs())
        return forward.trace(*args).lower(lowering_platforms=("cuda",)).as_text()

    inside, outside = (lowered(f"pallas:split:16:0:1:1:4:::::{gate}", gated, args) for gate in (1, 0))
    assert "triton" in inside and "triton" in outside
    assert "stablehlo.multiply" not in inside and "stablehlo.multiply" in outside  # y * z * sigmoid(z)
    shape = SMALL_MODEL_SHAPES[0]
    assert "triton" in lowered("pallas:split:16:0:1:1:4::::1", shape, make_inputs(shape, jnp.float32)[0])
