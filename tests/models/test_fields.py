"""The model builders read ``config.model`` one way: the project's own configs (``name`` included) and plain dicts
build, a misspelt field or dtype is refused by name instead of leaving its default in place."""

import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from ssm_jax.models import build_memorymamba, memorymamba_model_config
from ssm_jax.models.mambaad import build_mambaad, mambaad_model_config
from ssm_jax.models.resnet_classifier import build_resnet_classifier, resnet_model_config
from ssm_jax.models.snarm import build_snarm, snarm_model_config

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the configs package, as train.py finds it
from configs import mambaad_elpv, memorymamba_elpv, resnet_elpv, snarm_elpv  # noqa: E402

BUILDERS = {"memorymamba": (build_memorymamba, lambda **kw: memorymamba_model_config(4, **kw), memorymamba_elpv),
            "resnet": (build_resnet_classifier, lambda **kw: resnet_model_config(4, **kw), resnet_elpv),
            "mambaad": (build_mambaad, mambaad_model_config, mambaad_elpv),
            "snarm": (build_snarm, snarm_model_config, snarm_elpv)}


@pytest.mark.parametrize("name", BUILDERS)
def test_the_projects_config_the_model_section_and_a_dict_build_alike(name):
    build, _, module = BUILDERS[name]
    config = module.get_config()
    assert config.model.name == name
    whole, section, plain = build(config), build(config.model), build(config.model.to_dict())
    assert whole == section == plain


@pytest.mark.parametrize("name", BUILDERS)
def test_misspelt_fields_and_dtypes_are_refused_by_name(name):
    build, model_config, _ = BUILDERS[name]
    fields = model_config().to_dict()
    with pytest.raises(ValueError, match=r"unknown config.model fields \['d_sate'\]; valid: \[.*'dtype'"):
        build({**fields, "d_sate": 4})
    with pytest.raises(ValueError, match=r"unknown fields \['d_sate'\]"):
        model_config(d_sate=4)
    with pytest.raises(ValueError, match=r"config.model.dtype='fp16'; valid: float32, bfloat16"):
        build({**fields, "dtype": "fp16"})
    assert build({**fields, "dtype": jnp.bfloat16}).dtype == jnp.bfloat16
