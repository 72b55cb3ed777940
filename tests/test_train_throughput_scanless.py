"""benchmarks/train_throughput.py --scan-impl none: the stand-in keeps the scan's output shape and dtype and lets
gradients reach every input the layers feed it, and it replaces the scan only inside its context."""

import jax
import jax.numpy as jnp
import numpy as np

import ssm_jax.nn.mamba
import ssm_jax.nn.ss2d
from benchmarks.train_throughput import bench_config, scan_patched, scanless
from ssm_jax.ssm import selective_scan


def test_stand_in_has_the_scans_output_and_reaches_every_input():
    k = jax.random.split(jax.random.PRNGKey(0), 8)
    u, delta, z = (jax.random.normal(k[i], (2, 9, 8), jnp.bfloat16) for i in range(3))
    A = -jnp.exp(jax.random.normal(k[3], (8, 4)))
    B, C = (jax.random.normal(k[i], (2, 9, 2, 4)) for i in (4, 5))
    D, bias = jax.random.normal(k[6], (8,)), jax.random.normal(k[7], (8,))
    y = scanless(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    assert y.shape == u.shape and y.dtype == u.dtype
    grads = jax.grad(lambda *a: jnp.sum(scanless(*a, delta_softplus=True).astype(jnp.float32)),
                     argnums=range(8))(u, delta, A, B, C, D, z, bias)
    assert all(np.abs(np.asarray(g, np.float32)).sum() > 0 for g in grads)


def test_none_swaps_the_scan_only_inside_its_context():
    with scan_patched("none"):
        assert ssm_jax.nn.ss2d.selective_scan is scanless and ssm_jax.nn.mamba.selective_scan is scanless
    assert ssm_jax.nn.ss2d.selective_scan is selective_scan and ssm_jax.nn.mamba.selective_scan is selective_scan
    with scan_patched("pallas"):
        assert ssm_jax.nn.ss2d.selective_scan is selective_scan


def test_memory_off_drops_the_three_memory_modules_only():
    from types import SimpleNamespace
    rows = {m: bench_config("tiny", SimpleNamespace(image_size=224, scan_impl="none", dtype="bfloat16", memory=m))
            for m in ("on", "off")}
    flags = ("use_coarse_memory", "use_fine_memory", "use_fusion")
    assert [rows["on"].model[f] for f in flags] == [True] * 3 and [rows["off"].model[f] for f in flags] == [False] * 3
    assert rows["off"].model.depths == (2, 2, 9, 2) and rows["off"].model.scan_impl == "auto"
    assert rows["off"].model.dtype == "bfloat16"
