"""benchmarks/ss2d_parts.py on CPU: its parts are the layer's pieces in the layer's layouts, and a run writes one
row per part with the layer as the unit of the shares."""

import json

import numpy as np
import pytest

from benchmarks.ss2d_parts import PARTS, SMALL_SHAPES, part_functions, run


@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=lambda s: s.name)
def test_gathers_out_undoes_gathers_in_for_every_direction(shape):
    """Each direction is a permutation of the cells and the merge sums the K inverses: out(in(x)) = K x."""
    parts = part_functions(shape, "chunked")
    gathers_in, (x,) = parts["gathers in"]
    gathers_out, _ = parts["gathers out"]
    seqs = gathers_in(x)
    assert seqs.shape == (shape.batch, shape.size ** 2, shape.directions * shape.d_inner)
    np.testing.assert_allclose(gathers_out(seqs), shape.directions * np.asarray(x), rtol=1e-6, atol=1e-6)
    scan, scan_inputs = parts["scan"]
    assert scan_inputs[0].shape == seqs.shape and scan(*scan_inputs).shape == seqs.shape
    layer, (params, image) = parts["layer"]
    fused, _ = parts["layer, fused"]
    np.testing.assert_allclose(fused(params, image), layer(params, image), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # every SS2D part compiled and timed: in the slow run, keeping CI's run short
def test_run_writes_a_row_per_part(tmp_path):
    path = tmp_path / "parts.jsonl"
    rows = run(SMALL_SHAPES[:1], "chunked", steps=1, warmup=0, json_path=str(path))
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["part"] for r in written] == list(PARTS) and written == rows
    assert all(r["fwd_s"] > 0 and r["fwd_bwd_s"] > 0 for r in rows)
    assert next(r for r in rows if r["part"] == "layer")["share_of_layer_fwd_bwd"] == 1.0
