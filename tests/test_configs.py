"""Every config file loads, is locked, names a known dataset with valid loader options, and builds its model."""

import importlib
import inspect
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from ssm_jax.data import SOURCES
from ssm_jax.training.run import build_model

CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*_*.py")
                 if not p.stem.endswith("_common") and not p.stem.startswith("_"))


def test_there_are_configs():
    assert {"memorymamba_elpv", "memorymamba_neu", "memorymamba_gc10", "memorymamba_mt",
            "memorymamba_aluminum"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_locked_and_consistent(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    with pytest.raises(AttributeError):
        config.optim.learning_rate = 1.0  # a typo of optim.lr must not be silently added
    assert config.data.name in SOURCES
    params = inspect.signature(SOURCES[config.data.name]).parameters
    assert set(config.data.source) <= set(params)
    assert config.data.root is None or "data" in config.data.root or "SSM_JAX_DATA" in config.data.root
    model = build_model(config)
    size = 64 if name.endswith("elpv") else config.data.image_size
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))))
    assert shapes["params"]["head"]


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
    with pytest.raises(ValueError, match="unknown variant 'tpu'.*gpu, cpu"):
        importlib.import_module("configs.memorymamba_elpv").get_config("tpu")
