"""SS2D: the K directions stacked in one scan equal K separate scans; the fused (in-place) directions equal the
gathered ones; implementations agree; jit/vmap/grad."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.nn import SS2D
from ssm_jax.ssm import cross_merge, cross_scan, scan_orders, selective_scan
from tests.host_checks import finite_on_host
from tests.jaxpr_equations import equations

D_MODEL, HEIGHT, WIDTH = 8, 5, 6  # rectangular, so a transposed order cannot pass by symmetry


def _key(seed):
    return jax.random.key(seed, impl="rbg")  # threefry init compiles for seconds on CPU; rbg in well under one


def _inputs(seed=0, batch=2):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, HEIGHT, WIDTH, D_MODEL)), jnp.float32)


def _per_direction(m: SS2D, x):
    """SS2D forward with one selective_scan call per direction, each with its slice of the stacked parameters."""
    _, height, width, _ = x.shape
    xi, z = m.in_proj(x)
    xi = nn.silu(m.conv2d(xi))
    orders = scan_orders(m.scan_method, height, width, m.directions)
    xs = cross_scan(xi, orders)
    d, r, n = xi.shape[-1], m.dt_projs_weight.shape[1], m.d_state
    ys = []
    for k in range(m.directions):
        dt, B, C = jnp.split(xs[:, k] @ m.x_proj_weight[k], [r, r + n], axis=-1)
        ys.append(selective_scan(xs[:, k], dt @ m.dt_projs_weight[k], -jnp.exp(m.A_logs[k * d:(k + 1) * d]), B, C,
                                 D=m.Ds[k * d:(k + 1) * d], delta_bias=m.dt_projs_bias[k], delta_softplus=True,
                                 impl="sequential"))
    y = cross_merge(jnp.stack(ys, axis=1), orders, height, width)
    return m.out_proj(m.out_norm(y) * nn.silu(z))


@pytest.mark.parametrize("method,directions", [("sweep", 4), ("zigzag", 8)])
def test_stacked_scan_equals_per_direction(method, directions):
    m = SS2D(D_MODEL, d_state=4, scan_method=method, directions=directions, scan_impl="sequential")
    x = _inputs()
    variables = jax.jit(m.init)(_key(1), x)
    both = jax.jit(lambda v, x: (m.apply(v, x), m.apply(v, x, method=_per_direction)))
    y, ref = both(variables, x)
    assert y.shape == x.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    p = variables["params"]  # mamba's init: S4D-real A, D = 1, softplus(dt bias) in [dt_min, dt_max]
    np.testing.assert_allclose(np.exp(p["A_logs"]), np.tile(np.arange(1, 5), (directions * 2 * D_MODEL, 1)),
                               rtol=1e-6)
    np.testing.assert_array_equal(p["Ds"], 1.0)
    dt = np.asarray(jax.nn.softplus(p["dt_projs_bias"]))
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)


@pytest.mark.parametrize("method,directions,impl", [("sweep", 4, "sequential"), ("hilbert", 8, "chunked"),
                                                    ("zigzag", 8, "pallas")])
def test_fused_directions_equal_gathered_directions(method, directions, impl):
    """The raster-layout path (each direction scanned in place; ``pallas``: the kernel's order input, in
    interpret mode) gives the gathered path's outputs and gradients (gathered with the sequential scan)."""
    x = _inputs()
    gathered = SS2D(D_MODEL, d_state=4, scan_method=method, directions=directions, scan_impl="sequential",
                    fused_directions=False)
    fused = gathered.clone(fused_directions=True, scan_impl=impl)
    variables = jax.jit(gathered.init)(_key(4), x)

    def loss(m, v, x):
        return jnp.sum(jnp.sin(m.apply(v, x)))

    run = jax.jit(lambda v, x: [(m.apply(v, x), jax.grad(lambda v, x: loss(m, v, x), (0, 1))(v, x))
                                for m in (gathered, fused)])
    (y_ref, g_ref), (y, g) = run(variables, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_params_follow_vmamba_layout():
    m = SS2D(D_MODEL, d_state=4)
    p = jax.eval_shape(m.init, _key(0), _inputs())["params"]
    d, k, r = 2 * D_MODEL, 4, 1
    assert p["x_proj_weight"].shape == (k, d, r + 8)
    assert p["dt_projs_weight"].shape == (k, r, d)
    assert p["dt_projs_bias"].shape == (k, d)
    assert p["A_logs"].shape == (k * d, 4) and p["Ds"].shape == (k * d,)
    assert {"in_proj", "conv2d", "out_norm", "out_proj"} <= set(p)


def test_impls_agree_and_jit_vmap_grad():
    x = _inputs()
    seq = SS2D(D_MODEL, d_state=4, scan_impl="sequential")
    assoc = SS2D(D_MODEL, d_state=4, scan_impl="associative")
    variables = jax.jit(seq.init)(_key(2), x)

    def loss(v, x):
        return jnp.sum(assoc.apply(v, x) ** 2)

    @jax.jit
    def run(v, xs):
        y_seq = seq.apply(v, xs[0])
        y_vmap = jax.vmap(lambda x: assoc.apply(v, x))(xs)
        return y_seq, y_vmap, jax.grad(loss)(v, xs[0])

    xs = jnp.stack([x, _inputs(seed=3)])
    y_seq, y_vmap, grads = run(variables, xs)
    np.testing.assert_allclose(y_vmap[0], y_seq, rtol=1e-5, atol=1e-6)
    assert y_vmap.shape == xs.shape
    grads = finite_on_host(grads)
    assert float(np.abs(grads["params"]["A_logs"]).sum()) > 0


def test_an_image_without_its_batch_axis_is_named():
    with pytest.raises(ValueError, match=r"SS2D: x has shape \(6, 6, 8\); expected \(batch, height, width, "
                                         r"d_model=8\)"):
        SS2D(8, scan_impl="sequential").init(jax.random.key(0), jnp.ones((6, 6, 8)))


def test_an_unknown_direction_count_is_named_before_the_parameters():
    """directions=3 with parameters made for 4 was a shape error of Flax's on x_proj_weight, not this one."""
    x = _inputs()
    params = jax.eval_shape(SS2D(D_MODEL, scan_impl="sequential").init, _key(0), x)
    with pytest.raises(ValueError, match=r"SS2D: directions=3; valid: 1, 2, 4, 8"):
        jax.eval_shape(SS2D(D_MODEL, directions=3, scan_impl="sequential").apply, params, x)


def _broadcasts(jaxpr) -> list[tuple]:
    """Output shapes of every broadcast_in_dim outside the Pallas kernels, nested jaxprs included."""
    return [tuple(eqn.outvars[0].aval.shape) for eqn in equations(jaxpr) if eqn.primitive.name == "broadcast_in_dim"]


def test_in_place_gradient_copies_neither_the_map_nor_ys_gradient_per_direction():
    """With the Pallas scan the K directions read the one map (a shared u) and y's gradient one direction wide (the
    scan sums the directions, ``sum_groups``): the gradient's program broadcasts no (batch, L, K, d) array; the
    sequential scan, which tiles u, does."""
    m = SS2D(D_MODEL, d_state=4, directions=4, scan_impl="pallas")
    x = _inputs()
    variables = jax.jit(m.init)(_key(5), x)
    batch, length, k, d = x.shape[0], HEIGHT * WIDTH, 4, 2 * D_MODEL
    xs = jnp.ones((batch, length, d))
    orders = jnp.asarray(scan_orders("sweep", HEIGHT, WIDTH, k))

    def k_fold(module):
        loss = lambda v, xs: jnp.sum(jnp.sin(module.apply(v, xs, orders, method=SS2D.scan_in_place)))
        jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1)))(variables, xs).jaxpr
        return [s for s in _broadcasts(jaxpr) if int(np.prod(s)) == batch * length * k * d]

    assert k_fold(m) == []
    assert k_fold(m.clone(scan_impl="sequential"))  # the check sees a K-fold copy where there is one
