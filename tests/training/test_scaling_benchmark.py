"""benchmarks/scaling.py on 2 forced CPU devices with a one-block MemoryMamba: the table's structure and the
efficiency and input-share arithmetic (not the timings themselves, which mean nothing on shared CPU cores)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--config=configs/memorymamba_elpv.py:cpu", "--config.data.image_size=16", "--config.model.depths=(1,)",
        "--config.model.dims=(8,)", "--config.model.d_state=4", "--config.model.coarse_size=4",
        "--config.model.fine_size=8", "--config.model.scan_impl=sequential"]


def _scaling(*args, devices: int = 2):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.run([sys.executable, "benchmarks/scaling.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """(stdout, JSON rows) of a run asking for 1, 2 and 4 devices on a host with 2, fed by the ELPV pipeline."""
    out = tmp_path_factory.mktemp("scaling") / "rows.jsonl"
    result = _scaling(*TINY, "--devices=4,1,2", "--per_device_batch=4", "--steps=2", "--warmup=1", "--pipeline",
                      f"--json={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow  # runs the benchmark in a subprocess: minutes on 2 cores
def test_rows_cover_the_available_device_counts(measured):
    stdout, rows = measured
    assert "# skipped [4]: this host has 2 device(s)" in stdout
    assert [r["devices"] for r in rows] == [1, 2]
    for r in rows:
        assert r["model"] == "memorymamba" and r["image_size"] == 16 and r["grad_accum_steps"] == 1
        assert r["per_device_batch"] == 4 and r["global_batch"] == 4 * r["devices"]
        assert r["step_ms"] > 0 and r["pipeline_step_ms"] > 0


@pytest.mark.slow  # runs the benchmark in a subprocess: minutes on 2 cores
def test_efficiency_and_input_share_follow_their_definitions(measured):
    _, rows = measured
    one = rows[0]
    for r in rows:
        assert r["images_per_s"] == pytest.approx(r["global_batch"] / (r["step_ms"] / 1e3), rel=1e-12)
        assert r["efficiency"] == pytest.approx(r["images_per_s"] / (r["devices"] * one["images_per_s"]), rel=1e-12)
        assert r["pipeline_share"] == pytest.approx(max(0.0, 1 - r["step_ms"] / r["pipeline_step_ms"]), rel=1e-12)
        assert 0 <= r["pipeline_share"] < 1
    assert one["efficiency"] == 1.0


@pytest.mark.slow  # runs the benchmark in a subprocess: minutes on 2 cores
def test_table_prints_one_line_per_row(measured):
    stdout, rows = measured
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["devices", "batch"])
    table = [line.split() for line in lines[header + 1:]]
    assert len(table) == len(rows)
    for cells, r in zip(table, rows):
        assert cells[:2] == [str(r["devices"]), str(r["global_batch"])]
        assert cells[4] == f"{r['efficiency']:.3f}"
        assert cells[6] == f"{100 * r['pipeline_share']:.1f}%"


def test_bad_device_list_and_batch_are_named():
    result = _scaling(*TINY, "--devices=1,two", devices=1)
    assert result.returncode == 1 and "--devices=1,two: expected comma-separated integers" in result.stderr
    result = _scaling(*TINY, "--devices=2", "--per_device_batch=3", "--config.train.grad_accum_steps=2")
    assert result.returncode == 1
    assert ("the global batch (--per_device_batch=3 x 2 devices)=6 must be a multiple of train.grad_accum_steps (2) "
            "x the number of devices (2) = 4") in result.stderr
