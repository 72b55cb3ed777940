"""Nearest-normal-patch baseline (PatchCore-like) under an anomaly config's own encoder, data, metrics and outputs.

    python benchmarks/feature_distance.py --config=configs/mambaad_elpv.py:defects --workdir=runs/fd_elpv \
        [--config.seed=S] [--coreset_ratio=0.01] [--config.data.root=DIR]
    python benchmarks/feature_distance.py --config=configs/snarm_elpv.py:defects --workdir=runs/fd_snarm_elpv

No training: the encoder is exactly the one ``train.py`` builds for the same config and seed (random unless
``config.model.encoder_weights`` is given), and a test image's anomaly map is each patch's distance to its nearest
normal training patch, upsampled, averaged over scales and blurred with ``config.eval.sigma``; the score is the
map's maximum (``ssm_jax.models.patch_bank``). Per task:

* MambaAD (``task="anomaly"``): stage 1-3 features of the ResNet encoder, one bank per scale, each thinned to a
  greedy k-center coreset of ``--coreset_ratio``.
* SNARM (``task="residual"``): the patch features SNARM's heads see (``SNARM.patch_features``) and SNARM's own bank,
  built as ``train.py`` builds it (``config.bank``; ``--coreset_ratio`` and ``--max_patches`` are not used). The
  map is then the norm of SNARM's nearest inter-residual: what the navigated Mamba heads add over their input.

Evaluation writes the same ``<workdir>/eval`` files as ``eval.py``, so the model and the baseline are compared on
equal terms.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ssm_jax.data import make_pipeline  # noqa: E402
from ssm_jax.models.patch_bank import build_bank, patch_distance_maps  # noqa: E402
from ssm_jax.models.resnet import build_resnet  # noqa: E402
from ssm_jax.models.snarm import SNARM  # noqa: E402
from ssm_jax.training import cli, reconstruction, residual  # noqa: E402
from ssm_jax.training.gather import gather_predictions  # noqa: E402
from ssm_jax.training.log import write_config  # noqa: E402
from ssm_jax.training.mesh import make_mesh  # noqa: E402
from ssm_jax.training.optim import make_optimizer  # noqa: E402
from ssm_jax.training.run import build_model, load_source  # noqa: E402

_CONFIG, _WORKDIR = cli.define_run_flags("Directory for config.json and eval/ outputs.")
_CORESET = flags.DEFINE_float("coreset_ratio", 0.01, "Fraction of each scale's training patches kept (k-center).")
_MAX_PATCHES = flags.DEFINE_integer("max_patches", 0, "Uniform subsample cap per scale before the coreset (0: none).")


def _pipeline(config, source):
    return iter(make_pipeline(source, batch_size=config.train.eval_batch_size, image_size=config.data.image_size,
                              train=False, seed=config.seed, num_workers=config.data.num_workers,
                              skip_corrupt=config.data.skip_corrupt))


def _mambaad_banks(config, mesh, train_source):
    """(variables, banks, features): MambaAD's encoder stage 1-3 features, one coreset bank per stage."""
    model = build_model(config)
    state = reconstruction.create_state(model, make_optimizer(config.optim, 1, frozen=reconstruction.FROZEN),
                                        jax.random.PRNGKey(config.seed), config.data.image_size, mesh,
                                        encoder_weights=config.model.encoder_weights)
    reconstruction.warn_if_random_encoder(config)
    encoder = build_resnet(config.model.encoder, (1, 2, 3))
    variables = {"params": state.params["encoder"], "batch_stats": state.model_state["batch_stats"]["encoder"]}
    features = jax.jit(lambda v, images: encoder.apply(v, images))
    per_scale = [[], [], []]
    for batch in _pipeline(config, train_source):
        for scale, f in zip(per_scale, features(variables, jnp.asarray(batch["image"]))):
            scale.append(jax.device_get(f))
    banks = [build_bank(f, max_patches=_MAX_PATCHES.value or None, coreset_ratio=_CORESET.value, seed=config.seed)
             for f in per_scale]
    return variables, banks, encoder.apply


def _snarm_bank(config, mesh, train_source):
    """(variables, [bank], features): SNARM's patch features and the bank its train.py run builds."""
    model = build_model(config)
    state = residual.create_state(model, make_optimizer(config.optim, 1, frozen=residual.FROZEN),
                                  jax.random.PRNGKey(config.seed), config.data.image_size, mesh,
                                  **residual.state_kwargs(config, train_source))
    residual.warn_if_random_encoder(config)
    variables = {"params": state.params, **state.model_state}

    def features(v, images):
        return [state.apply_fn(v, images, method=SNARM.patch_features)]

    return variables, [variables["bank"]["features"]], features


BANKS = {"anomaly": _mambaad_banks, "residual": _snarm_bank}


def run(config, workdir):
    if config.task not in BANKS:
        raise ValueError(f"feature_distance: config.task={config.task!r}; expected an anomaly config "
                         f"({', '.join(BANKS)}: configs/mambaad_*.py or configs/snarm_*.py)")
    mesh = make_mesh()
    train_source, test_source = load_source(config, "train"), load_source(config, "test")
    start = time.perf_counter()
    variables, banks, features = BANKS[config.task](config, mesh, train_source)
    print(f"banks of {[int(b.shape[0]) for b in banks]} patches from {len(train_source)} normal images in "
          f"{time.perf_counter() - start:.0f} s", flush=True)

    @jax.jit
    def predict(state, images):
        variables, banks = state
        maps, scores = patch_distance_maps(features(variables, images), banks, images.shape[1:3], config.eval.sigma)
        return {"maps": maps.astype(jnp.float16), "scores": scores}

    predictions = gather_predictions((variables, banks), predict, _pipeline(config, test_source),
                                     num_examples=len(test_source), local_batch=config.train.eval_batch_size,
                                     mesh=mesh, keep=reconstruction.host_fields)
    write_config(workdir, config)
    summary = reconstruction.write_evaluation(predictions, test_source, os.path.join(workdir, "eval"),
                                              num_overlays=config.eval.num_overlays)
    print(reconstruction.format_report(summary))
    print(f"wrote {os.path.join(workdir, 'eval')}")


def main(argv):
    cli.run(argv, run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
