"""benchmarks/scan_parts.py on CPU (interpret mode): its parts, composed, are the whole Pallas scan, values and
gradients, so the GPU timings are of the passes the scan really runs; a run writes one row per part."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.scan import Shape
from benchmarks.scan import SHAPES
from benchmarks.scan_parts import PARTS, SEGMENT, part_functions, run, segmented
from kernels.selective_scan import ops, split

TWO_SEGMENTS = Shape("two segments", 1, 2 * SEGMENT, 16, 4)
ORDER = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "dbias")  # selective_scan's float inputs


@pytest.mark.parametrize("wide_forward", [False, pytest.param(True, marks=pytest.mark.slow)])  # True: the slow run
def test_parts_compose_to_the_whole_scan(wide_forward, monkeypatch):
    """Also with the forward's channel blocks wider than the backward's (as on the GPU's larger grids), where the
    reductions must take the backward's blocks."""
    shape = TWO_SEGMENTS
    if wide_forward:
        monkeypatch.setattr(split, "WIDE_FORWARD_GRID", 1)
        shape = Shape("two segments, 32 channels", 1, 2 * SEGMENT, 32, 4)
        assert [ops._design(ops.Tuning(), *(jnp.zeros(s) for s in ((1, 2 * SEGMENT, 32), (1, 2 * SEGMENT, 1, 4),
                                                                    (32, 4))), direction=d)[2].block_d
                for d in ("forward", "backward")] == [32, 16]
    parts = part_functions(shape, jnp.float32, interpret=True)
    y, grads = parts["outputs"]
    whole, whole_args = parts["whole"]
    y_whole, grads_whole = whole(*whole_args)
    np.testing.assert_allclose(y, y_whole, rtol=1e-5, atol=1e-5)
    for name, expected in zip(ORDER, grads_whole):
        np.testing.assert_allclose(grads[name], expected, rtol=1e-4, atol=1e-4, err_msg=name)
    total, dsum = parts["chain"][1][1:]
    assert total.shape == (1, 2, shape.dim, 4) and dsum.shape == (1, 2, shape.dim)


def test_run_writes_a_row_per_part(tmp_path):
    path = tmp_path / "parts.jsonl"
    rows = run([TWO_SEGMENTS], jnp.float32, repeats=1, json_path=str(path), calls=2)
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["part"] for r in written] == list(PARTS) and written == rows
    assert all(r["seconds"] > 0 and r["batched_seconds"] > 0 for r in rows) and rows[-1]["share_of_whole"] == 1.0


def test_one_segment_sequence_is_refused():
    with pytest.raises(ValueError, match=f"L = {SEGMENT} is one segment"):
        part_functions(Shape("one segment", 1, SEGMENT, 16, 4), jnp.float32, interpret=True)


def test_only_segmented_shapes_have_parts():
    """The 8-dir grid (512 rows x 12 channel blocks) is full, so auto walks it in one segment; the others not."""
    assert {s.name: segmented(s) for s in SHAPES} == {
        "vim-s": True, "mamba-768": True, "8-dir": False, "long": True, "vmamba-64x64": True}
