"""Numeric config fields outside their range are named before anything is built (``training.config_ranges``)."""

import ml_collections
import pytest

from ssm_jax.training.config_ranges import check_ranges


def _config(**sections):
    return ml_collections.ConfigDict({"train": {"epochs": 1}, **sections})


def test_every_field_out_of_range_is_named_in_one_message():
    config = _config(model={"d_state": 0, "dims": (24, -48), "dropout": 1.0},
                     optim={"lr": -0.002, "warmup_fraction": 5.0, "b2": 0.999, "grad_clip": -1.0},
                     eval={"score_pool": 0, "num_overlays": -1, "flag_threshold": -0.5})
    with pytest.raises(ValueError) as error:
        check_ranges(config)
    message = str(error.value)
    for expected in ("config.model.d_state=0: expected an integer >= 1",
                     "config.model.dims=(24, -48): expected each an integer >= 1",
                     "config.model.dropout=1.0: expected a probability in [0, 1)",
                     "config.optim.lr=-0.002: expected a value > 0",
                     "config.optim.warmup_fraction=5.0: expected a fraction in [0, 1]",
                     "config.optim.grad_clip=-1.0: expected a value >= 0",
                     "config.eval.score_pool=0: expected an integer >= 1",
                     "config.eval.num_overlays=-1: expected a value >= 0",
                     "config.eval.flag_threshold=-0.5: expected a value >= 0"):
        assert expected in message
    assert "b2" not in message and message.count("config.") == 9


@pytest.mark.parametrize("section, value", [
    ({"model": {"d_state": 2.5}}, "2.5"),       # a size must be whole
    ({"model": {"d_state": True}}, "True"),     # and not a flag
    ({"optim": {"lr": float("nan")}}, "nan"),
    ({"data": {"source": {"anomaly_fraction": 1.5}}}, "1.5"),
    ({"train": {"epochs": 1, "max_steps": 0}}, r"max_steps=0: expected -1 \(no limit\) or an integer >= 1"),
])
def test_values_that_only_look_numeric_are_refused(section, value):
    with pytest.raises(ValueError, match=value):
        check_ranges(_config(**section))


def test_absent_fields_and_names_pass():
    """A config without a field (SNARM has no ``model.dims``) or with a name where a number may stand (dt_rank
    "auto") is not refused; the edges of each range are inside it."""
    check_ranges(_config(model={"dt_rank": "auto", "expand": 1, "drop_path": 0.0},
                         optim={"warmup_fraction": 1.0, "end_lr": 0.0, "b1": 0.0},
                         data={"num_workers": 0, "source": {}}))
    check_ranges(_config(train={"epochs": 1, "max_steps": -1}))
    check_ranges(_config(train={"epochs": 1, "max_steps": 1}))
