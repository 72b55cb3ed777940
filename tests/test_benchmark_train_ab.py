"""``benchmarks/train_ab.py``: a revision's code exported as git holds it, ``train_throughput.py``'s rows read back,
the two trees run alternately, and the summary's medians and ratio."""

import os
import subprocess

import pytest

from benchmarks import train_ab

TABLE = """# 1 x NVIDIA H100 80GB HBM3 (gpu); 224 px, global batch 64, scan auto, memory on, activations float32
size         params  compile (s)   step (s)   images/s  peak memory
tiny     40,195,972         51.6      0.114      561.0  27.41 GiB (device peak)
small    49,000,000         47.0      0.200      320.0  40.00 GiB (device peak)
"""


MAMBAAD_ROWS = """ours (JAX, scan auto, float32)          train      batch 16       64.6 ms    247.6 images/s  (H100)
ours (JAX, scan auto, float32)          inference  batch 32       27.7 ms   1155.5 images/s  (H100)
"""


def test_rows_are_read_from_the_throughput_table():
    assert train_ab.rows(TABLE) == {"tiny": 561.0, "small": 320.0}
    assert train_ab.rows("Traceback (most recent call last):\n  ...") == {}


def test_rows_are_read_from_mambaad_throughputs_phases():
    assert train_ab.rows(MAMBAAD_ROWS) == {"train": 247.6, "inference": 1155.5}


def test_export_writes_the_revisions_files(tmp_path):
    train_ab.extract_revision("HEAD", train_ab.CODE, str(tmp_path), "train_ab.py")
    assert sorted(os.listdir(tmp_path)) == sorted(train_ab.CODE)
    path = "benchmarks/train_throughput.py"
    committed = subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True, text=True, cwd=train_ab.REPO)
    assert (tmp_path / path).read_text() == committed.stdout


def test_export_names_a_revision_git_lacks(tmp_path):
    with pytest.raises(SystemExit,
                       match="train_ab.py: git archive no-such-revision benchmarks configs kernels ssm_jax failed"):
        train_ab.extract_revision("no-such-revision", train_ab.CODE, str(tmp_path), "train_ab.py")


def test_trees_alternate_and_the_summary_compares_their_medians(tmp_path, capsys):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "train_throughput.py").write_text("")
    calls, rates = [], {train_ab.REPO: iter([100.0, 104.0, 96.0]), str(tmp_path): iter([90.0, 80.0, 100.0])}

    def fake_run(tree, args, cache_dir, script):
        assert script == "train_throughput.py"
        calls.append((tree, tuple(args), cache_dir))
        return {"tiny": next(rates[tree])}

    readings = train_ab.interleave(str(tmp_path), 3, ["--sizes", "tiny"], run=fake_run, cache_root="/c")
    args = ("--sizes", "tiny")
    assert calls == [(train_ab.REPO, args, "/c/tree"), (str(tmp_path), args, "/c/base")] * 3
    assert readings == {"tree": {"tiny": [100.0, 104.0, 96.0]}, "base": {"tiny": [90.0, 80.0, 100.0]}}
    assert "round 2  base tiny         80.0 images/s" in capsys.readouterr().out
    row = train_ab.summary(readings).splitlines()[1].split()
    assert row == ["tiny", "100.0", "90.0", f"{100 / 90:.3f}"]


def test_a_folder_without_an_export_is_named(tmp_path):
    with pytest.raises(SystemExit, match="has no benchmarks/train_throughput.py: run train_ab.py export REV"):
        train_ab.interleave(str(tmp_path), 1, [])


def test_the_script_asked_for_runs_in_both_trees(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "train_throughput.py").write_text("")
    with pytest.raises(SystemExit, match="has no benchmarks/mambaad_throughput.py"):
        train_ab.interleave(str(tmp_path), 1, [], script="mambaad_throughput.py")
    (tmp_path / "benchmarks" / "mambaad_throughput.py").write_text("")
    ran = []
    readings = train_ab.interleave(str(tmp_path), 1, ["--impl", "ours"], script="mambaad_throughput.py",
                                   run=lambda tree, args, cache_dir, script: ran.append(script) or {"train": 1.0})
    assert ran == ["mambaad_throughput.py"] * 2
    assert readings == {"tree": {"train": [1.0]}, "base": {"train": [1.0]}}


def test_a_run_gets_its_trees_code_and_only_the_cache_it_is_given(tmp_path, monkeypatch):
    """``run_tree`` starts the tree's script with the tree first on ``PYTHONPATH`` and the cache folder it is given,
    or none (a cache set outside is not passed on)."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "train_throughput.py").write_text(
        "import os, sys\n"
        "first = os.environ['PYTHONPATH'].split(os.pathsep)[0]\n"
        "print('tiny', '1', '0.0', '0.1', 1.0 if first == os.getcwd() else 0.0)\n"
        "print('small', '1', '0.0', '0.1', len(os.environ.get('JAX_COMPILATION_CACHE_DIR', '')))\n")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere/else")
    assert train_ab.run_tree(str(tmp_path), [], "/c/base") == {"tiny": 1.0, "small": float(len("/c/base"))}
    assert train_ab.run_tree(str(tmp_path), []) == {"tiny": 1.0, "small": 0.0}
