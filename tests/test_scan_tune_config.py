"""benchmarks/scan_tune.py configs: each field becomes the selective_scan_pallas keyword it names."""

import pytest

from benchmarks.kernel_configs import config_width, parse_config


def test_config_fields_map_to_kernel_keywords():
    assert parse_config("split:16:128:1:1") == dict(design="split", block_d=16, chunk=128, num_warps=(1, 1))
    assert parse_config("split:16:128:1:2:8")["unroll"] == 8
    hoisted = parse_config("split:8:64:1:1:0:1")
    assert "unroll" not in hoisted and hoisted["hoist_loads"] is True
    assert parse_config("serial:32:16:4:8:0:0")["hoist_loads"] is False
    outside = parse_config("split:16:128:1:1:4:0:1")
    assert outside["delta_in_kernel"] is False and outside["hoist_loads"] is False and outside["unroll"] == 4
    assert "prefetch_order" not in outside
    assert parse_config("split:16:128:1:1:4:0:1:1")["prefetch_order"] is True
    default_hoist = parse_config("split:16:128:1:1:4::1:1")  # an empty field takes the default
    assert "hoist_loads" not in default_hoist and default_hoist["prefetch_order"] is True
    assert "chunk" not in parse_config("split:16:0:1:1:4")  # the design's own segment length
    rows = parse_config("split:16:0:1:1:4::::1")
    assert rows["prefetch_rows"] is True and "prefetch_order" not in rows
    assert parse_config("split:16:0:1:1:4:::::0")["gate_in_kernel"] is False
    assert parse_config("split:32/16:0:1:1::::::2")["gate_in_kernel"] == "forward"
    assert parse_config("split:16:0:1:1:2::::::1")["chain_in_kernel"] is True
    assert parse_config("split:32/16:0:1:1:2")["block_d"] == (32, 16)  # forward/backward
    with pytest.raises(SystemExit, match="major field .state_major. was removed"):
        parse_config("split:32/16:0:1:1::::::::1")
    assert "state_major" not in parse_config("split:32/16:0:1:1::::::::0")
    paired = parse_config("split:32/16:0:1:1:::::::::1")
    assert paired["pair_chunks"] is True and "state_major" not in paired
    assert parse_config("split:32/16:0:1:1:::0")["delta_in_kernel"] is True
    assert parse_config("split:32/16:0:1:1:::2")["delta_in_kernel"] == "forward"
    assert parse_config("split:32/16:0:1:1:::3")["delta_in_kernel"] == "inference"
    assert parse_config("split:32/16:0:1:1::::::::::1/0")["poly_exp"] == (1, 0)  # (states kernel, walk)
    assert parse_config("split:32/16:0:1:1::::::::::2")["poly_exp"] == 2  # both
    assert "poly_exp" not in parse_config("split:32/16:0:1:1:::::::::1:")


def test_outside_field_values_are_checked():
    with pytest.raises(SystemExit, match=r"outside is one of \[0, 1, 2, 3\], not 4"):
        parse_config("split:32/16:0:1:1:::4")


def test_too_many_fields_are_refused():
    with pytest.raises(SystemExit, match="expected design:block_d"):
        parse_config("split:16:128:1:1:4:1:1:1:1:1:1:0:1:1/0:9")


def test_config_column_fits_the_longest_config_and_a_gap():
    configs = ["split:32/16:0:1:1", "split:32/16:0:1:1::::::::1:1"]
    assert config_width(configs) == len(configs[1]) + 2 == 30
