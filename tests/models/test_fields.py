"""The model builders read ``config.model`` one way: the project's own configs (``name`` included) and plain dicts
build, a misspelt field or dtype is refused by name instead of leaving its default in place."""

import os
import subprocess
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


def test_a_helpers_own_output_passed_back_is_taken():
    """``mambaad_model_config(**mambaad_model_config(d_state=4).to_dict())``: its ``name`` is not a foreign field;
    another model's name is refused."""
    for helper in (mambaad_model_config, snarm_model_config):
        config = helper(d_state=4)
        assert helper(**config.to_dict()) == config
    assert memorymamba_model_config(**memorymamba_model_config(4).to_dict()) == memorymamba_model_config(4)
    with pytest.raises(ValueError, match=r"snarm_model_config: name='mambaad'; this helper's models have "
                                         r"name='snarm'"):
        snarm_model_config(**mambaad_model_config().to_dict())


def test_parameters_stay_float32_with_x64_on(tmp_path):
    """With ``jax_enable_x64`` (a float64 reference computation beside the model) no parameter turns float64:
    Flax's own initialisers follow the default float type, so the modules name float32."""
    script = tmp_path / "dtypes.py"
    script.write_text(
        "import jax, jax.numpy as jnp\n"
        "from ssm_jax.models import build_mambaad, build_memorymamba, build_snarm, mambaad_model_config, "
        "memorymamba_model_config, snarm_model_config\n"
        "from ssm_jax.nn.mamba import MambaMixer\n"
        "assert jnp.ones(()).dtype == jnp.float64\n"
        "images, key = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32), jax.random.key(0)\n"
        "models = [build_memorymamba(memorymamba_model_config(4, depths=(1, 1), dims=(16, 32), d_state=4)),\n"
        "          build_mambaad(mambaad_model_config(encoder='resnet18', decoder_depths=(2, 2, 2, 2), d_state=1,\n"
        "                                             directions=2)),\n"
        "          build_snarm(snarm_model_config(encoder='resnet18', d_state=1))]\n"
        "trees = [jax.eval_shape(m.init, key, images) for m in models]\n"
        "sequence = jax.ShapeDtypeStruct((1, 5, 8), jnp.float32)\n"
        "trees.append(jax.eval_shape(MambaMixer(8, d_state=2).init, key, sequence))\n"
        "wide = {jax.tree_util.keystr(p): x.dtype for tree in trees\n"
        "        for p, x in jax.tree_util.tree_leaves_with_path(tree) if x.dtype == jnp.float64}\n"
        "print(wide or 'all float32')\n")
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=root,
                         env={**os.environ, "JAX_ENABLE_X64": "1", "PYTHONPATH": str(root)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "all float32"
