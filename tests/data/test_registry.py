import pytest

from ssm_jax.data import SOURCES, get_source


def test_registry_names():
    assert set(SOURCES) == {"elpv", "elpv_ad", "folder", "neu", "gc10", "mt", "aluminum", "mvtec", "visa",
                            "realiad", "mvtec3d", "synthetic", "fractal"}


def test_errors():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        get_source("imagenet", "/x")
    with pytest.raises(ValueError, match="needs a root"):
        get_source("mvtec", None)
    with pytest.raises(ValueError, match="split 'val'"):
        get_source("mvtec", "/x", "val")
