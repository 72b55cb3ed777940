"""Fractal pretraining end to end at CPU scale: ``memorymamba_elpv.py:fractal_cpu`` trains and evaluates on drawn
classes, and its network starts the ELPV ``:cpu`` classifier (``config.train.init_from``) with a fresh head."""

import importlib

import numpy as np
import pytest

from ssm_jax.training import run
from ssm_jax.training.init_from import read_variables
from tests.training.conftest import flat_params


@pytest.mark.slow  # a training run and a classifier's state: about a minute on two cores
def test_fractal_pretraining_starts_the_elpv_classifier(tmp_path, capsys):
    module = importlib.import_module("configs.memorymamba_elpv")
    config = module.get_config("fractal_cpu")
    config.data.source.num_classes = config.model.num_classes = 10
    config.data.source.per_class_train = 4
    config.train.update(max_steps=4, batch_size=8, eval_batch_size=8, checkpoint_every=2)
    summary = run.train_and_evaluate(config, tmp_path / "fractal")
    assert summary["num_images"] == 20 and 0 <= summary["acc"] <= 1  # two test draws of each of the ten classes
    assert (tmp_path / "fractal" / "eval" / "confusion.png").is_file()
    pretrained = flat_params(read_variables(tmp_path / "fractal")["params"])

    classifier = module.get_config("cpu")
    fresh = flat_params(run.Experiment(classifier, tmp_path / "fresh").state.params)
    classifier.train.init_from = str(tmp_path / "fractal")
    started = flat_params(run.Experiment(classifier, tmp_path / "ft").state.params)
    said = f"init_from {tmp_path / 'fractal'}: its own test accuracy {100 * summary['acc']:.2f} % on 20 images of 10"
    assert said in capsys.readouterr().out
    assert started.keys() == fresh.keys()
    outputs = {name: (pretrained[name].shape, value.shape) for name, value in started.items()
               if name.startswith("head/") and pretrained[name].shape != value.shape}
    assert outputs and all(a[-1] == 10 and b[-1] == 4 for a, b in outputs.values())  # the classes' layer
    for name, value in started.items():
        if name.startswith("head/"):
            np.testing.assert_array_equal(value, fresh[name])
        else:
            np.testing.assert_array_equal(value, pretrained[name])
