"""benchmarks/rows.py: shapes chosen by name in the order asked, unknown names refused by name, rows appended."""

import json
from typing import NamedTuple

import pytest

from benchmarks.rows import append_jsonl, select_shapes


class Shape(NamedTuple):
    name: str


SHAPES = (Shape("a"), Shape("b"), Shape("c"))


def test_select_shapes_keeps_the_asked_order():
    assert select_shapes(SHAPES, None) == list(SHAPES)
    assert select_shapes(SHAPES, None, default=SHAPES[1:]) == list(SHAPES[1:])
    assert [s.name for s in select_shapes(SHAPES, "a", default=SHAPES[1:])] == ["a"]  # any shape by name
    assert [s.name for s in select_shapes(SHAPES, "c,a")] == ["c", "a"]


def test_unknown_shape_is_named_with_the_valid_ones():
    with pytest.raises(SystemExit, match=r"unknown shapes \['x'\]; valid: a, b, c"):
        select_shapes(SHAPES, "a,x")


def test_rows_are_appended_one_json_line_each(tmp_path):
    path = tmp_path / "rows.jsonl"
    append_jsonl(str(path), {"shape": "a", "ms": 1.5})
    append_jsonl(str(path), {"shape": "b", "ms": 2.0})
    append_jsonl(None, {"shape": "c"})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"shape": "a", "ms": 1.5},
                                                                            {"shape": "b", "ms": 2.0}]
