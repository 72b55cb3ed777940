"""Every config file loads, is locked, names a known dataset with valid loader options, and builds its model."""

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from ssm_jax.data import SOURCES, replicas
from ssm_jax.training.config_ranges import check_ranges
from ssm_jax.training.run import build_model, load_source

CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*_*.py")
                 if not p.stem.endswith("_common") and not p.stem.startswith("_") and p.stem != "from_run")


def test_there_are_configs():
    assert {"memorymamba_elpv", "memorymamba_neu", "memorymamba_gc10", "memorymamba_mt",
            "memorymamba_aluminum", "mambaad_mvtec", "mambaad_visa", "mambaad_realiad", "mambaad_elpv", "snarm_mvtec",
            "snarm_visa", "snarm_mvtec3d", "snarm_elpv"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_locked_and_consistent(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    with pytest.raises(AttributeError):
        config.optim.learning_rate = 1.0  # a typo of optim.lr must not be silently added
    assert config.data.name in SOURCES
    params = inspect.signature(SOURCES[config.data.name]).parameters
    assert set(config.data.source) <= set(params)
    assert config.data.root is None or "data" in config.data.root or "SSM_JAX_DATA" in config.data.root
    _check_model(config, 64 if name.endswith("elpv") or config.task == "anomaly" else config.data.image_size)


def _check_model(config, size):
    model = build_model(config)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))
    assert shapes["params"]["head" if config.task == "classification" else "decoder"]


def test_paper_training_defaults():
    config = importlib.import_module("configs.memorymamba_neu").get_config()
    assert (config.optim.name, config.optim.lr, config.optim.weight_decay, config.optim.warmup_fraction,
            config.optim.decay, config.train.epochs, config.train.batch_size) == ("adamw", 2e-5, 0.01, 0.05,
                                                                                  "linear", 10, 64)


def test_data_root_follows_environment(monkeypatch):
    monkeypatch.setenv("SSM_JAX_DATA", "/datasets")
    config = importlib.import_module("configs.memorymamba_gc10").get_config()
    assert config.data.root == "/datasets/gc10"


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="unknown variant 'tpu'.*gpu, cpu, mim, mim_cpu"):
        importlib.import_module("configs.memorymamba_elpv").get_config("tpu")


@pytest.mark.parametrize("variant,classifier", [("mim", "gpu"), ("mim_cpu", "cpu")])
def test_memorymamba_elpv_pretraining_variants(variant, classifier):
    """Masked-image pretraining of exactly the classifier variant's network, so its backbone can start it."""
    from ssm_jax.models.masked_image import MaskedImageModel
    module = importlib.import_module("configs.memorymamba_elpv")
    config, target = module.get_config(variant), module.get_config(classifier)
    assert config.task == "pretraining" and 0 < config.loss.mask_ratio < 1 and "eval" not in config
    assert config.model == target.model and config.optim.lr == target.optim.lr
    assert config.data.to_dict() == {**target.data.to_dict(), "class_balance": 0.0}  # the labels stay unread
    with pytest.raises(AttributeError):
        config.loss.mask_ratios = 0.5
    size = config.data.image_size
    model = MaskedImageModel(build_model(config), config.loss.mask_patch)
    if variant == "mim":
        size = 64  # the network at 224 px compiles slowly on CPU; the mask patch still divides it
        assert config.data.image_size % config.loss.mask_patch == 0
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))
    stride = 32 if variant == "mim" else 16  # four stages (patch 4, three merges) or three
    assert shapes["params"]["decoder"]["kernel"].shape[-1] == stride * stride * 3


@pytest.mark.parametrize("variant,classifier", [("fractal", "gpu"), ("fractal_cpu", "cpu")])
def test_memorymamba_elpv_fractal_variants(variant, classifier):
    """Fractal pretraining of the classifier variant's network (but for its head's classes and, on the GPU, its
    dtype), on 1,000 drawn classes (100 at CPU scale) whose batches the pipeline makes."""
    from ssm_jax.data import make_pipeline
    module = importlib.import_module("configs.memorymamba_elpv")
    config, target = module.get_config(variant), module.get_config(classifier)
    classes = 1000 if variant == "fractal" else 100
    assert config.task == "classification" and config.data.name == "fractal" and config.model.num_classes == classes
    differ = {k for k in target.model if config.model[k] != target.model[k]}
    assert differ == ({"num_classes", "dtype"} if variant == "fractal" else {"num_classes"})
    assert config.data.image_size == (128 if variant == "fractal" else 64) and config.data.class_balance == 0
    source = load_source(config, "test")
    assert len(source) == 2 * classes and len(source.class_names) == classes
    data = config.data
    batch = next(iter(make_pipeline(source, batch_size=4, image_size=data.image_size, train=True, flips=data.flips,
                                    rot90=data.rot90, affine=data.affine)))
    assert batch["image"].shape == (4, data.image_size, data.image_size, 3)
    assert set(np.asarray(batch["label"]).tolist()) <= set(range(classes))


def test_mambaad_paper_training_defaults():
    config = importlib.import_module("configs.mambaad_mvtec").get_config()
    optim = config.optim
    assert (config.task, optim.name, optim.lr, optim.b1, optim.b2, optim.weight_decay, optim.warmup_fraction,
            optim.decay, optim.step_fraction, optim.step_factor) == ("anomaly", "adamw", 0.005, 0.9, 0.999, 1e-4, 0.0,
                                                                     "step", 0.8, 0.1)
    assert (config.train.batch_size, config.data.image_size, tuple(config.data.flips), config.loss.weight,
            config.eval.sigma) == (16, 256, (), 5.0, 4.0)
    assert (config.model.encoder, tuple(config.model.decoder_depths), config.model.scan_method,
            config.model.directions) == ("resnet34", (3, 4, 6, 3), "hilbert", 8)
    assert config.data.source.categories is None  # multi-class: every category


@pytest.mark.parametrize("variant", ["defects", "synthetic", "defects_cpu", "synthetic_cpu"])
def test_mambaad_elpv_variants(variant):
    config = importlib.import_module("configs.mambaad_elpv").get_config(variant)
    assert config.data.name == ("elpv_ad" if variant.startswith("defects") else "synthetic")
    assert config.data.image_size == (64 if variant.endswith("_cpu") else 256)
    assert config.optim.lr == pytest.approx(0.005 * config.train.batch_size / 16)
    params = inspect.signature(SOURCES[config.data.name]).parameters
    assert set(config.data.source) <= set(params)
    _check_model(config, config.data.image_size if variant.endswith("_cpu") else 64)


def test_unknown_mambaad_variant_is_named():
    with pytest.raises(ValueError, match="unknown variant 'cpu'.*defects, synthetic, defects_cpu, synthetic_cpu"):
        importlib.import_module("configs.mambaad_elpv").get_config("cpu")


def test_snarm_official_settings():
    config = importlib.import_module("configs.snarm_mvtec").get_config()
    model = config.model
    assert (config.task, model.num_neighbours, model.self_ratio, model.residual_encoding, tuple(model.atrous_rates),
            model.directions, model.scan_method, model.depth, model.embed_dim, model.d_state) == (
        "residual", 3, 0.75, "abs_square", (3, 6, 12, 24), 4, "sweep", 2, 128, 4)
    assert (config.optim.name, config.optim.lr, config.train.max_steps, config.bank.max_patches,
            config.eval.sigma, config.eval.score_pool, config.eval.score_stride) == (
        "adamw", 1e-3, 40_000, 1_000_000, 4.0, 16, 2)
    assert config.data.source.categories is None  # multi-class: one bank and one model for every category


@pytest.mark.parametrize("variant", ["defects", "synthetic", "defects_cpu", "synthetic_cpu"])
def test_snarm_elpv_variants(variant):
    config = importlib.import_module("configs.snarm_elpv").get_config(variant)
    assert config.data.name == ("elpv_ad" if variant.startswith("defects") else "synthetic")
    assert config.data.image_size == (64 if variant.endswith("_cpu") else 256)
    assert set(config.data.source) <= set(inspect.signature(SOURCES[config.data.name]).parameters)
    _check_model(config, 64)
    with pytest.raises(ValueError, match="unknown variant 'cpu'.*defects, synthetic, defects_cpu, synthetic_cpu"):
        importlib.import_module("configs.snarm_elpv").get_config("cpu")


def _config_args():
    """(config file, variant or None) for every config file and each of its variants."""
    for name in CONFIGS:
        module = importlib.import_module(f"configs.{name}")
        for variant in getattr(module, "VARIANTS", (None,)):
            yield name, variant


@pytest.mark.parametrize("name,variant", list(_config_args()))
def test_every_variant_takes_command_line_overrides(name, variant):
    """``--config.data.root`` (a placeholder field when the loader has a default root) and the usual overrides
    work on every variant, as ``train.py`` parses them; the ``:mim`` variant once lost its placeholder in a copy."""
    path = str(Path(__file__).resolve().parents[1] / "configs" / f"{name}.py") + (f":{variant}" if variant else "")
    argv = ["train.py", f"--config={path}", "--config.data.root=/datasets/mine", "--config.seed=3",
            "--config.train.epochs=2", "--config.optim.lr=0.002"]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    values(argv)
    config = values.config
    assert (config.data.root, config.seed, config.train.epochs, config.optim.lr) == ("/datasets/mine", 3, 2, 0.002)
    check_ranges(config)  # every shipped variant is inside the ranges a run checks first
    if config.task == "residual":  # SNARM's cosine decay ends at lr / 10, also when lr is overridden
        assert config.optim.end_lr == pytest.approx(2e-4)


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_elpv_classifier_also_reports_defective_as_p_at_least_one_half(variant):
    from ssm_jax.data.elpv import CLASS_NAMES
    config = importlib.import_module("configs.memorymamba_elpv").get_config(variant)
    assert CLASS_NAMES[config.eval.binary_from:] == ("p2_3", "p1")


def test_snarm_keeps_the_released_centre_crop_on_its_datasets_and_a_bad_crop_is_named():
    for name, crop in (("snarm_mvtec", 0.875), ("snarm_visa", 0.875), ("snarm_mvtec3d", 0.875),
                       ("snarm_elpv", 1.0), ("mambaad_mvtec", 1.0)):
        assert importlib.import_module(f"configs.{name}").get_config().data.center_crop == crop, name
    config = importlib.import_module("configs.snarm_mvtec").get_config()
    config.data.center_crop = 1.5
    with pytest.raises(ValueError, match=r"config.data.center_crop=1.5 must lie in \(0, 1\]"):
        load_source(config, "train")


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_memorymamba_size_is_the_variant_and_depths_and_dims_override_it(size):
    """The section once carried ``preset = None``: refused from the command line and ignored beside the depths and
    dims the variant sets. The variant is the size; depths and dims are the fields to override."""
    from ssm_jax.models.memorymamba import memorymamba_presets
    model = importlib.import_module("configs.memorymamba_neu").get_config(size).model
    assert "preset" not in model
    assert (model.depths, model.dims) == (memorymamba_presets[size]["depths"], memorymamba_presets[size]["dims"])
    assert build_model(importlib.import_module("configs.memorymamba_neu").get_config(size)).dims == model.dims



def test_the_folder_config_has_elpvs_cpu_network_as_its_cpu_variant():
    """``memorymamba_folder.py:cpu``: a user's own folders on a machine without an accelerator get the network and
    schedule measured on ELPV at CPU scale (one ``apply_cpu`` for both), not the 224 px tiny model."""
    folder = importlib.import_module("configs.memorymamba_folder").get_config("cpu")
    elpv = importlib.import_module("configs.memorymamba_elpv").get_config("cpu")
    for path in ("data.image_size", "model.depths", "model.dims", "model.d_state", "model.expand", "model.coarse_size",
                 "model.fine_size", "optim.lr", "train.epochs", "train.batch_size", "train.eval_batch_size"):
        section, key = path.split(".")
        assert folder[section][key] == elpv[section][key], path
    assert folder.data.image_size == 64 and folder.data.name == "folder"


@pytest.mark.parametrize("model", ["mambaad", "snarm"])
def test_the_anomaly_folder_configs_have_elpvs_cpu_network_as_their_cpu_variant(model):
    """``mambaad_folder.py:cpu`` and ``snarm_folder.py:cpu`` (once no variants at all): a user's own parts on a machine
    without an accelerator get ELPV's ``:defects_cpu`` network, resolution and schedule."""
    folder = importlib.import_module(f"configs.{model}_folder").get_config("cpu")
    elpv = importlib.import_module(f"configs.{model}_elpv").get_config("defects_cpu")
    for section in ("model", "optim", "train"):
        assert folder[section].to_dict() == elpv[section].to_dict(), section
    assert folder.data.image_size == elpv.data.image_size == 64 and folder.data.name == "mvtec"


@pytest.mark.slow  # ~50 s (MambaAD) and ~30 s (SNARM): two steps and an evaluation each
@pytest.mark.parametrize("model", ["mambaad", "snarm"])
def test_the_anomaly_folder_configs_cpu_variant_trains(model, tmp_path):
    root = replicas.write_replica("mvtec", str(tmp_path / "data"), per_class=2)
    done = subprocess.run([sys.executable, "train.py", f"--config=configs/{model}_folder.py:cpu",
                           f"--workdir={tmp_path / 'run'}", f"--config.data.root={root}", "--config.train.max_steps=2",
                           "--config.train.batch_size=4"], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "eval" / "metrics.json").exists()
