"""``benchmarks/kernel_ab.py``: a git revision's scan kernels exported beside the tree's, and both timed and checked
against each other (interpret mode on CPU: the wiring, not a timing)."""

import math
import os

import pytest

from benchmarks.kernel_ab import compare, export, load_base
from benchmarks.scan import Shape


def test_an_exported_revision_loads_beside_the_tree_and_is_compared_with_it(tmp_path):
    path = export("HEAD", str(tmp_path))
    for name in os.listdir(path):
        if name.endswith(".py"):
            text = open(os.path.join(path, name), encoding="utf-8").read()
            assert "kernels.selective_scan" not in text.replace("base_kernels.selective_scan", "")
    base = load_base(str(tmp_path))
    import kernels.selective_scan.ops as tree
    assert base.__file__.startswith(str(tmp_path)) and base.__file__ != tree.__file__
    assert base.split.__name__ == "base_kernels.selective_scan.split"  # its own modules, not the tree's
    row = compare(base, tree, Shape("tiny", 1, 24, 4, 4), "float32", rounds=1, calls=1, bandwidth=1e9, interpret=True)
    assert row["y_diff"] < 1e-5 and row["grad_diff"] < 1e-5  # HEAD and the tree both match the recurrence
    assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("fwd_ratio", "fwd_bwd_ratio", "new_floor"))


def test_a_revision_git_lacks_or_a_missing_export_is_named(tmp_path):
    with pytest.raises(SystemExit, match="git archive no-such-rev"):
        export("no-such-rev", str(tmp_path))
    with pytest.raises(SystemExit, match="run kernel_ab.py export REV"):
        load_base(str(tmp_path / "absent"))
