"""A tiny MemoryMamba classification experiment on a replica class-per-folder dataset (3 classes, 16 px)."""

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from configs.common import finalize
from configs.memorymamba_common import memorymamba_config
from ssm_jax.data import replicas


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory):
    return replicas.write_replica("folder", str(tmp_path_factory.mktemp("data")), per_class=12)


def make_tiny_config(data_root: str, **train):
    """A locked config for a one-block MemoryMamba on 16 px images; ``train`` overrides ``config.train``."""
    config = memorymamba_config("folder", 3, data_root, image_size=16, test_fraction=0.25, seed=0)
    config.model.depths, config.model.dims = (1,), (8,)
    config.model.d_state, config.model.coarse_size, config.model.fine_size = 4, 4, 8
    config.model.scan_impl = "sequential"
    config.data.flips = ()
    config.optim.lr = 3e-3
    config.train.update(batch_size=8, eval_batch_size=8, epochs=20, log_every=1, checkpoint_every=3, max_steps=8)
    config.train.update(train)
    return finalize(config)


@pytest.fixture
def tiny_config(folder_root):
    """Returns a factory: tiny_config(**train_overrides) -> locked config."""
    return lambda **train: make_tiny_config(folder_root, **train)


def flat_params(tree) -> dict:
    """A parameter tree as {"a/b/kernel": host array}, for comparing two runs' tensors by path."""
    return {k: np.asarray(v) for k, v in flatten_dict(jax.device_get(tree), sep="/").items()}
