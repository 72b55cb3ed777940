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
    monkeypatch.setattr(benchmarks.scan, "functions",
                        lambda impl, order=None, sum_groups=False: asked.append(impl) or (impl, None))
    forward, args = _ours("vmamba-64x64", "float32", "split:32/16:0:1:1::::::::1")
    assert forward == "pallas:split:32/16:0:1:1::::::::1" and args[0].shape == (8, 4096, 192)
    assert _ours("vmamba-64x64", "float32")[0] == "pallas" and asked == [forward, "pallas"]


COUNTERS = '''==PROF== Connected to process 668
"ID","Process ID","Kernel Name","Section Name","Metric Name","Metric Unit","Metric Value"
"0","668","states","Command line metrics","sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active","%","72.57"
"0","668","states","Command line profiler metrics","gpu__time_duration.sum","nsecond","40,864"
"1","668","walk","Command line profiler metrics","gpu__time_duration.sum","nsecond","66,656"
"1","668","walk","Command line profiler metrics","an_unlisted_counter","","7"
"2","668","walk","Command line profiler metrics","gpu__time_duration.sum","nsecond","66,000"
'''


def test_metrics_a_kernel_a_column_in_listed_order(tmp_path, capsys):
    """``metrics``: each kernel's counters (a kernel launched twice keeps its last launch), printed a metric a row in
    ``METRICS`` order, unlisted counters after, '-' where a kernel lacks one."""
    from benchmarks.scan_kernel_times import METRICS, metric_table, print_metric_table

    path = tmp_path / "counters.csv"
    path.write_text(COUNTERS)
    table = metric_table(str(path))
    assert list(table) == ["states", "walk"]
    assert table["walk"]["gpu__time_duration.sum"] == "66,000 nsecond"
    assert table["states"]["sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active"] == "72.57 %"
    print_metric_table(table)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["metric", "states", "walk"]
    assert [line.split()[0] for line in lines[1:]] == [METRICS[0], METRICS[4], "an_unlisted_counter"]
    assert lines[2].split()[1:] == ["72.57", "%", "-"] and lines[3].split()[1:] == ["-", "7"]


def test_metrics_refuses_a_file_without_counters_or_no_file(tmp_path):
    from benchmarks.scan_kernel_times import metric_table

    path = tmp_path / "stalls.txt"
    path.write_text("reasons: long_sb 0.6\n")
    with pytest.raises(SystemExit, match="stalls.txt holds no ncu metric rows"):
        metric_table(str(path))
    with pytest.raises(SystemExit, match="no ncu CSV at .*missing.csv"):
        metric_table(str(tmp_path / "missing.csv"))


def test_metric_names_is_the_list_for_ncu():
    import subprocess
    import sys

    from benchmarks import scan_kernel_times
    from benchmarks.scan_kernel_times import METRICS

    done = subprocess.run([sys.executable, scan_kernel_times.__file__, "metric-names"], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip().split(",") == list(METRICS) and "gpu__time_duration.sum" in METRICS
