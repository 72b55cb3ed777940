"""``benchmarks/scan_kernel_times.py``: ``summary``, the kernels launched once a call, in microseconds, from ncu's CSV;
``pallas --config``, which forward it runs."""

import pytest

from benchmarks.scan_kernel_times import summary

CSV = '''==PROF== Connected to process 1
"ID","Kernel Name","Metric Name","Metric Unit","Metric Value"
"0","setup_fusion","gpu__time_duration.sum","nsecond","1,200"
"1","setup_fusion","gpu__time_duration.sum","nsecond","1,300"
"2","walk","gpu__time_duration.sum","usecond","50.00"
"3","gate","gpu__time_duration.sum","nsecond","9,000"
"4","walk","gpu__time_duration.sum","usecond","54.00"
"5","gate","gpu__time_duration.sum","nsecond","11,000"
"6","walk","gpu__time_duration.sum","ms","0.052"
"7","gate","gpu__time_duration.sum","ns","10000"
"7","gate","dram__bytes.sum","byte","10000"
'''


def test_kernels_of_one_call_and_their_sum(tmp_path, capsys):
    path = tmp_path / "ncu.csv"
    path.write_text(CSV)
    per_call = summary(str(path), calls=3)
    assert per_call == pytest.approx({"walk": 52.0, "gate": 10.0})  # setup_fusion, launched twice, is not the call's
    assert "kernels of one call: 62.0 us" in capsys.readouterr().out


def test_pallas_mode_takes_a_scan_tune_config(monkeypatch):
    """``pallas --config C`` runs ``scan.functions("pallas:C")`` (``scan_tune.py``'s configs); without it, the
    default."""
    import benchmarks.scan
    from benchmarks.scan_kernel_times import _ours

    asked = []
    monkeypatch.setattr(benchmarks.scan, "functions", lambda impl, order=None: asked.append(impl) or (impl, None))
    forward, args = _ours("vmamba-64x64", "float32", "split:32/16:0:1:1::::::::1")
    assert forward == "pallas:split:32/16:0:1:1::::::::1" and args[0].shape == (8, 4096, 192)
    assert _ours("vmamba-64x64", "float32")[0] == "pallas" and asked == [forward, "pallas"]
