"""README's "Models in your own program" block, run as written: the models build, apply and differentiate as it
says, so the snippet cannot drift from the API."""

import re
from pathlib import Path

import jax
import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
    section = README.read_text().split("### Models in your own program", 1)[1].split("\n### ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_the_readme_models_block_runs_as_written():
    names: dict = {}
    exec(compile(_snippet(), "README.md (Models in your own program)", "exec"), names)  # noqa: S102
    assert names["out"]["logits"].shape == (2, 4)
    assert jax.tree.structure(names["shapes"]["params"]) == jax.tree.structure(names["variables"]["params"])
    grads = jax.tree.leaves(names["grads"])
    assert all(np.all(np.isfinite(g)) for g in grads) and any(np.any(g != 0) for g in grads)
    assert np.ndim(names["ad_loss"]) == 0 and np.isfinite(names["ad_loss"]) and names["ad_loss"] > 0
    assert set(names["updates"]) == {"batch_stats"}
