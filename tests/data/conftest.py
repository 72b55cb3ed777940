import pytest

from ssm_jax.data import elpv, replicas

PER_CLASS = 3


@pytest.fixture(scope="session")
def replica_root(tmp_path_factory):
    """Every dataset's replica, written once per session under one directory (read-only for tests)."""
    root = str(tmp_path_factory.mktemp("replicas"))
    for name in replicas.WRITERS:
        replicas.write_replica(name, root, PER_CLASS)
    return root


@pytest.fixture
def replica(tmp_path):
    """A fresh replica to damage: replica('mvtec') -> its root under this test's tmp dir."""
    return lambda name: replicas.write_replica(name, str(tmp_path), PER_CLASS)


@pytest.fixture(scope="session")
def elpv_labels():
    return elpv.read_labels()

