"""``benchmarks/init_time.py``: a run's measurement (the parameters' digest and count, with either threefry
lowering, which on a CPU give the same bits), the digest's sensitivity to one bit, and the summary's medians, ratio
and agreement."""

import numpy as np
import pytest

from benchmarks import init_time
from configs.memorymamba_elpv import get_config


@pytest.fixture
def small_model(monkeypatch):
    """The ``:cpu`` variant (64 px, depths 1-1-2) in place of a benchmark size."""
    monkeypatch.setattr(init_time, "bench_config", lambda size, args: get_config("cpu"))


def test_either_lowering_initialises_the_same_parameters_on_a_cpu(small_model):
    rows = [init_time.measure("tiny", 64, lowering) for lowering in init_time.LOWERINGS]
    assert [r["lowering"] for r in rows] == ["unrolled", "kernel"]
    assert rows[0]["digest"] == rows[1]["digest"] and rows[0]["params"] == rows[1]["params"] > 100_000
    assert all(r["seconds"] > 0 for r in rows)


def test_the_digest_sees_one_bit():
    tree = {"a": np.zeros(3, np.float32), "b": np.ones((2, 2), np.float32)}
    flipped = {"a": tree["a"].copy(), "b": tree["b"]}
    flipped["a"].view(np.uint32)[1] ^= 1
    assert init_time.digest(tree) == init_time.digest({k: v.copy() for k, v in tree.items()})
    assert init_time.digest(tree) != init_time.digest(flipped)


def test_summary_gives_medians_the_ratio_and_whether_runs_agree():
    row = lambda lowering, s, d="x": {"size": "tiny", "lowering": lowering, "seconds": s, "params": 40, "digest": d}
    lines, same = init_time.summary([row("unrolled", 90.0), row("kernel", 12.0), row("unrolled", 100.0),
                                     row("kernel", 10.0)])
    assert same and lines == ["tiny   unrolled        95.0  (90.0, 100.0)", "tiny   kernel          11.0  (12.0, 10.0)",
                              "tiny   kernel / unrolled 0.12", "tiny   same parameters in every run: yes (40)"]
    lines, same = init_time.summary([row("unrolled", 90.0), row("kernel", 12.0, d="y")])
    assert not same and lines[-1] == "tiny   same parameters in every run: NO (40)"
