"""benchmarks/mamba_ssm_times.py on CPU, with a float64-checked torch scan standing in for mamba_ssm's CUDA kernel:
its inputs follow mamba_ssm's layout and semantics, and a row carries both timings of both passes."""

import numpy as np
import torch

from benchmarks.mamba_ssm_times import peer_inputs, time_shape
from benchmarks.scan import Shape
from tests.ssm.reference import selective_scan_numpy


def reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm's ``selective_scan_fn`` semantics in plain torch: u, delta, z (b, d, l); B, C (b, 1, n, l)."""
    delta = delta.float() + delta_bias[None, :, None]
    delta = torch.nn.functional.softplus(delta) if delta_softplus else delta
    state = torch.zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        state = torch.exp(delta[:, :, t, None] * A) * state + (delta[:, :, t] * u[:, :, t].float())[..., None] \
            * B[:, 0, None, :, t].float()
        ys.append((state * C[:, 0, None, :, t].float()).sum(-1))
    y = torch.stack(ys, -1) + D[None, :, None] * u.float()
    return (y * torch.nn.functional.silu(z.float())).to(u.dtype)


def test_inputs_are_mamba_ssm_layout_and_the_stand_in_matches_float64_numpy():
    args, dy = peer_inputs(2, 7, 4, 3, torch.float32, "cpu")
    u, delta, A, B, C, D, z, bias = args
    assert u.shape == delta.shape == z.shape == dy.shape == (2, 4, 7) and B.shape == C.shape == (2, 1, 3, 7)
    assert A.shape == (4, 3) and bool((A < 0).all()) and all(a.requires_grad for a in args)
    to_bld = lambda x: np.swapaxes(x.detach().double().numpy(), 1, 2)
    to_blgn = lambda x: np.transpose(x.detach().double().numpy(), (0, 3, 1, 2))
    want, _ = selective_scan_numpy(to_bld(u), to_bld(delta), A.detach().double().numpy(), to_blgn(B),
                                   to_blgn(C), D.detach().double().numpy(), to_bld(z), bias.detach().double().numpy(),
                                   delta_softplus=True)
    got = to_bld(reference_scan(*args, delta_softplus=True))
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


def test_a_row_times_forward_and_backward_both_ways():
    row = time_shape(reference_scan, Shape("tiny", 1, 6, 4, 2), torch.float32, "cpu", repeats=2, calls=2,
                     warmup_s=0.0)
    assert (row["shape"], row["dtype"]) == ("tiny", "float32")
    for key in ("fwd_single", "fwd_batched", "fwd_bwd_single", "fwd_bwd_batched"):
        assert row[key] > 0, key
