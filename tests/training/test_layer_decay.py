"""Layer-wise learning-rate decay: layer numbering on MemoryMamba's parameter names (both block layouts), and the
optimizer's updates against the same optimizer without it, scaled by hand-computed powers of the decay."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import optim_config
from ssm_jax.models.memorymamba import build_memorymamba, layer_ids, stack_blocks
from ssm_jax.training.layer_decay import layer_scales
from ssm_jax.training.optim import make_optimizer

stack = jax.jit(stack_blocks)  # eagerly, each leaf shape's stack would compile on its own
MODEL = dict(num_classes=3, depths=(1, 2, 1), dims=(8, 16, 16), d_state=1, expand=1, coarse_size=4, fine_size=4)


def _params():
    model = build_memorymamba(MODEL)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
    leaves, treedef = jax.tree.flatten(shapes)
    rng = np.random.default_rng(0)
    return jax.tree.unflatten(treedef, [rng.normal(size=x.shape).astype(np.float32) for x in leaves])


def test_layers_counted_over_stages_like_simmim():
    ids, total = layer_ids(_params())
    assert total == 4
    assert ids == {"patch_embed": 0, "stage0_block0": 1, "stage1_downsample": 1, "stage1_block0": 2,
                   "stage1_block1": 3, "stage2_downsample": 3, "stage2_block0": 4, "norm": 5, "head": 5}


def test_stacked_layout_gets_the_same_scales_as_per_block():
    params = _params()
    per_block = stack(layer_scales(params, 0.5))  # the per-block factors, stacked as the scan layout is
    stacked = layer_scales(stack(params), 0.5)
    assert jax.tree.structure(per_block) == jax.tree.structure(stacked)
    for a, b, leaf in zip(jax.tree.leaves(per_block), jax.tree.leaves(stacked), jax.tree.leaves(stack(params))):
        np.testing.assert_allclose(np.broadcast_to(a, leaf.shape), np.broadcast_to(b, leaf.shape), rtol=1e-7)
    np.testing.assert_allclose(np.ravel(stacked["stage1_blocks"]["norm"]["scale"]), [0.5 ** 3, 0.5 ** 2], rtol=1e-7)


@pytest.mark.parametrize("stacked", [False, True])
def test_updates_are_the_plain_optimizers_times_decay_to_the_distance_from_the_head(stacked):
    params = stack(_params()) if stacked else _params()
    grads = jax.tree.map(lambda p: np.cos(p).astype(np.float32), params)
    base = optim_config(lr=1e-2, warmup_fraction=0.0, decay="constant", weight_decay=0.05, grad_clip=1.0)
    plain = make_optimizer(base, 10)
    decayed = make_optimizer(optim_config(**{**base.to_dict(), "layer_decay": 0.7}), 10)
    want = jax.jit(lambda: plain.update(grads, plain.init(params), params)[0])()  # jitted: eager dispatch is slow
    got = jax.jit(lambda: decayed.update(grads, decayed.init(params), params)[0])()
    distance = {"patch_embed": 5, "stage0_block0": 4, "stage1_downsample": 4, "stage1_block0": 3, "stage1_block1": 2,
                "stage2_downsample": 2, "stage2_block0": 1, "norm": 0, "head": 0,
                "stage0_blocks": np.array([4]), "stage1_blocks": np.array([3, 2]), "stage2_blocks": np.array([1])}
    for name in params:
        factor = 0.7 ** np.asarray(distance[name], np.float64)
        for g, w in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want[name])):
            expected = np.asarray(w, np.float64) * factor.reshape(factor.shape + (1,) * (w.ndim - factor.ndim))
            np.testing.assert_allclose(g, expected, rtol=1e-6, atol=1e-12)


def test_bad_decay_and_unknown_parameters_are_named():
    with pytest.raises(ValueError, match=r"config.optim.layer_decay=1.5; expected a value in \(0, 1\]"):
        make_optimizer(optim_config(layer_decay=1.5), 10)
    tx = make_optimizer(optim_config(layer_decay=0.5), 10)
    params = {"encoder": {"kernel": np.ones((2, 2), np.float32)}}
    with pytest.raises(ValueError, match="no layer for the parameters 'encoder'"):
        tx.update(params, tx.init(params), params)
