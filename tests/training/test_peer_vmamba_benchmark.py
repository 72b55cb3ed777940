"""benchmarks/peer_vmamba.py without a GPU: the shared step timing, the table and its ratio, and a run whose
PyTorch side cannot start (the official sources absent) reporting why instead of failing."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import timing
from benchmarks.peer_vmamba import format_table, jax_over_pytorch

ROOT = Path(__file__).resolve().parents[2]
ARGS = SimpleNamespace(image_size=224, batch=64, tf32="on", steps=20, warmup=3)


def _row(side: str, images_per_s: float) -> dict:
    return {"side": side, "model": f"model-{side}", "framework": side, "scan": "scan", "device": "gpu",
            "memory": "1 GiB", "params": 22_893_448, "step_s": 64 / images_per_s, "images_per_s": images_per_s}


def test_median_step_seconds_times_after_warmup_and_takes_the_median(monkeypatch):
    clock = iter([0.0, 1.0, 10.0, 15.0, 20.0, 22.0])  # (start, end) of the 3 timed steps: 1, 5 and 2 s
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    calls = []
    seconds = timing.median_step_seconds(lambda: calls.append("step"), lambda: calls.append("sync"), steps=3,
                                         warmup=2)
    assert seconds == 2.0
    assert calls == ["step", "step", "sync"] + ["step", "sync"] * 3
    with pytest.raises(ValueError, match="steps=0"):
        timing.median_step_seconds(lambda: None, lambda: None, steps=0, warmup=1)


def test_table_has_both_rows_and_the_jax_over_pytorch_ratio():
    rows = [_row("pytorch", 200.0), _row("jax", 300.0)]
    assert jax_over_pytorch(rows) == pytest.approx(1.5)
    table = format_table(rows, ARGS).splitlines()
    assert table[0].startswith("# 224 px, batch 64, float32 (TF32 on)")
    assert table[2].startswith("model-pytorch") and "22,893,448" in table[2] and "200.0" in table[2]
    assert table[3].startswith("model-jax") and "300.0" in table[3]
    assert table[4] == "# JAX / PyTorch images/s: 1.50"


def test_a_side_not_measured_shows_why_and_no_ratio():
    rows = [{"side": "pytorch", "model": "VMamba-T v0 (official)", "error": "VMamba sources not found at X"},
            _row("jax", 300.0)]
    assert jax_over_pytorch(rows) is None
    table = format_table(rows, ARGS)
    assert "VMamba-T v0 (official)        not measured: VMamba sources not found at X" in table
    assert "JAX / PyTorch" not in table


def test_missing_official_sources_are_reported_not_fatal(tmp_path):
    out = tmp_path / "rows.jsonl"
    result = subprocess.run([sys.executable, "benchmarks/peer_vmamba.py", "--pytorch_only", f"--vmamba={tmp_path}",
                             f"--json={out}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = f"VMamba sources not found at {tmp_path}/classification/models/vmamba.py"
    assert f"not measured: {expected}" in result.stdout
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["side"] == "pytorch" and row["error"].startswith(expected) and "images_per_s" not in row
