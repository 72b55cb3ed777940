"""benchmarks/chain_tune.py on CPU (interpret mode): ``run`` chains a shape's real segment summaries under every
config, in both directions, checks each against the first config and names each kernel for ncu; ``summary`` reads
those names back from ncu's CSV."""

import pytest

from benchmarks import chain_tune
from benchmarks.scan import SMALL_SHAPES

SHAPE = next(s for s in SMALL_SHAPES if s.name == "vmamba/small")


def test_run_checks_every_config_in_both_directions():
    rows = chain_tune.run_shape(SHAPE, ["16/8", "2/32"], calls=1, interpret=True)
    assert [(r["direction"], r["config"]) for r in rows] == [
        ("forward", "16/8"), ("forward", "2/32"), ("reverse", "16/8"), ("reverse", "2/32")]
    assert all(r["segments"] == 2 and r["check"] < 1e-6 for r in rows)
    assert rows[1]["kernel"] == "chain__vmamba_small__forward__2_32"


def test_summary_reads_each_kernels_launches(tmp_path):
    configs = ["16/8", "2/32"]
    lines = ['"ID","Kernel Name","Metric Name","Metric Unit","Metric Value"']
    for i, (direction, config, us) in enumerate([("forward", "16/8", "6.0"), ("forward", "2/32", "3.0"),
                                                 ("forward", "2/32", "2.0"), ("reverse", "16/8", "8.0"),
                                                 ("reverse", "2/32", "2.0")]):
        name = chain_tune.kernel_name(SHAPE.name, direction, config)
        lines.append(f'"{i}","{name}","gpu__time_duration.sum","usecond","{us}"')
    path = tmp_path / "chain.csv"
    path.write_text("\n".join(lines) + "\n")
    rows = chain_tune.summary(str(path), [SHAPE], configs)
    assert [(r["us"], r["launches"]) for r in rows] == [(6.0, 1), (2.5, 2), (8.0, 1), (2.0, 1)]
    assert [r["ratio"] for r in rows] == pytest.approx([1.0, 2.5 / 6.0, 1.0, 0.25])
    assert chain_tune.summary(str(path), None, configs) == rows  # shapes found from the kernels' names
    with pytest.raises(SystemExit, match="no launch of chain__vmamba_small__forward__4_16"):
        chain_tune.summary(str(path), [SHAPE], ["16/8", "4/16"])


def test_config_is_parsed_or_refused():
    assert chain_tune.parse_config("2/32") == dict(block_d=2, unroll=32, num_warps=1)
    assert chain_tune.parse_config("16/8/4") == dict(block_d=16, unroll=8, num_warps=4)
    with pytest.raises(SystemExit, match="expected block_d/unroll"):
        chain_tune.parse_config("16")
