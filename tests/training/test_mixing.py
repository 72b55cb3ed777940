"""Mixup and CutMix (``config.loss.mixup_alpha`` / ``cutmix_alpha``): the mixed images and the mixed cross-entropy
against NumPy references, the CutMix box, the per-step choice between the two, and the train step with them."""

import jax
import numpy as np
import pytest

from ssm_jax.losses import memorymamba_loss
from ssm_jax.training import classification
from ssm_jax.training.mesh import make_mesh, shard_batch
from ssm_jax.training.mixing import check_alphas, cut_box_mask, dominant_labels, mix_batch, swap_pairs

RNG = np.random.default_rng(0)
IMAGES = RNG.normal(size=(6, 12, 10, 3)).astype(np.float32)
LABELS = np.array([0, 1, 2, 3, 1, 0], np.int32)
PARTNER = np.array([1, 0, 3, 2, 5, 4])  # each image's partner: its neighbour


def test_swap_pairs_swaps_neighbours_and_keeps_an_odd_last():
    np.testing.assert_array_equal(swap_pairs(np.arange(6)), PARTNER)
    np.testing.assert_array_equal(swap_pairs(np.arange(5)), [1, 0, 3, 2, 4])
    np.testing.assert_array_equal(swap_pairs(IMAGES), IMAGES[PARTNER])


def test_partners_stay_on_their_device():
    """On a batch sharded over 4 devices, 2 images each, mixing compiles to no cross-device transfer."""
    from jax.sharding import NamedSharding, PartitionSpec
    mesh = make_mesh()
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    images = jax.device_put(np.concatenate([IMAGES, IMAGES[:2]]), sharding)
    labels = jax.device_put(np.concatenate([LABELS, LABELS[:2]]), sharding)
    mix = jax.jit(lambda x, y: mix_batch(jax.random.PRNGKey(0), x, y, 0.8, 1.0)[:2], in_shardings=sharding)
    hlo = mix.lower(images, labels).compile().as_text()
    assert not [op for op in ("collective-permute", "all-to-all", "all-gather") if op in hlo]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("lam", [0.2, 0.7, 0.95])
def test_cut_box_is_one_rectangle_and_lam_is_what_it_leaves(seed, lam):
    mask, kept = cut_box_mask(jax.random.PRNGKey(seed), 12, 10, lam)
    mask = np.asarray(mask)
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if rows.size:
        box = np.zeros_like(mask)
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = 1
        np.testing.assert_array_equal(mask, box)
    np.testing.assert_allclose(float(kept), 1 - mask.mean(), rtol=1e-6)
    assert mask.sum() <= round(12 * np.sqrt(1 - lam)) * round(10 * np.sqrt(1 - lam)) + 1e-6  # clipped, never larger


def test_mixup_blends_each_image_with_its_partner():
    mixed = mix_batch(jax.random.PRNGKey(1), IMAGES, LABELS, mixup_alpha=0.8, cutmix_alpha=0.0)
    lam = float(mixed.lam)
    assert 0 < lam < 1
    np.testing.assert_allclose(mixed.images, lam * IMAGES + (1 - lam) * IMAGES[PARTNER], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(mixed.partner, LABELS[PARTNER])
    np.testing.assert_array_equal(dominant_labels(LABELS, mixed), LABELS if lam >= 0.5 else LABELS[PARTNER])


def test_cutmix_pastes_the_partners_box():
    mixed = mix_batch(jax.random.PRNGKey(2), IMAGES, LABELS, mixup_alpha=0.0, cutmix_alpha=1.0)
    got = np.asarray(mixed.images)
    from_partner = np.all(got == IMAGES[PARTNER], axis=(0, 3))
    from_self = np.all(got == IMAGES, axis=(0, 3))
    assert np.all(from_partner | from_self)  # every pixel is one image's or the other's, untouched
    np.testing.assert_allclose(float(mixed.lam), 1 - from_partner.mean(), rtol=1e-6)


def test_both_alphas_choose_one_per_step():
    kinds, mix = set(), jax.jit(mix_batch, static_argnums=(3, 4))  # compiled once, not a cond per call
    for seed in range(16):
        got = np.asarray(mix(jax.random.PRNGKey(seed), IMAGES, LABELS, 0.8, 1.0).images)
        kinds.add("cutmix" if np.all((got == IMAGES) | (got == IMAGES[PARTNER])) else "mixup")
    assert kinds == {"cutmix", "mixup"}


def _log_softmax64(logits):
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_mixed_cross_entropy_matches_float64_reference():
    logits = RNG.normal(size=(6, 4)).astype(np.float32)
    lam, smoothing = 0.3, 0.1
    got = memorymamba_loss({"logits": logits}, LABELS, 0.1, 0.1, 0.5, 0.1, label_smoothing=smoothing,
                           ce_mix=(LABELS, LABELS[::-1], lam))[1]["cls"]
    logp = _log_softmax64(logits)

    def ce(labels):
        return np.mean((1 - smoothing) * -logp[np.arange(6), labels] - smoothing * logp.mean(-1))

    np.testing.assert_allclose(float(got), lam * ce(LABELS) + (1 - lam) * ce(LABELS[::-1]), rtol=1e-6)


@pytest.mark.parametrize("field", ["mixup_alpha", "cutmix_alpha"])
def test_bad_alpha_is_named(field, tiny_config):
    with pytest.raises(ValueError, match=rf"config.loss.{field}=-0.5; expected a value >= 0"):
        check_alphas(**{"mixup_alpha": 0.0, "cutmix_alpha": 0.0, field: -0.5})
    loss = tiny_config().loss.copy_and_resolve_references()
    setattr(loss, field, -0.5)
    with pytest.raises(ValueError, match=rf"config.loss.{field}=-0.5"):
        classification.make_train_step(loss, make_mesh())


@pytest.mark.slow  # three train steps compiled: in the slow run, keeping CI's run short
def test_train_step_with_mixing_is_deterministic_and_changes_the_loss(tiny_config, tmp_path):
    from ssm_jax.training import run
    config = tiny_config()
    experiment = run.Experiment(config, tmp_path)
    batch = next(iter(experiment.pipeline(experiment.train_source, train=True)))
    mesh = experiment.mesh

    def loss_of(mixup, cutmix):
        loss = config.loss.copy_and_resolve_references()
        loss.mixup_alpha, loss.cutmix_alpha = mixup, cutmix
        state = classification.create_state(experiment.model, experiment.state.tx, jax.random.PRNGKey(0),
                                            config.data.image_size, mesh)
        return float(classification.make_train_step(loss, mesh)(state, shard_batch(batch, mesh))[1]["loss"])

    plain, mixed = loss_of(0.0, 0.0), loss_of(0.8, 1.0)
    assert np.isfinite(mixed) and mixed != plain
    assert loss_of(0.8, 1.0) == mixed  # drawn from the step's key: the same step mixes the same way
