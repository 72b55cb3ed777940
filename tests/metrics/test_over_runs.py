"""``python -m ssm_jax.metrics.over_runs``: mean and sample standard deviation over runs against ``statistics``, key
patterns, Welch's comparison against scipy, and runs that cannot be compared (other test sets, missing metrics,
missing files) refused by name."""

import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

from ssm_jax.metrics import over_runs


def _classification_run(root, name, acc, recalls, num_images=656):
    run = root / name
    (run / "eval").mkdir(parents=True)
    per_class = {c: {"precision": 0.5, "recall": r, "f1": 0.4, "support": 10.0}
                 for c, r in zip(("p0", "p1"), recalls)}
    metrics = {"acc": acc, "f1": acc / 2, "num_images": num_images, "per_class": per_class,
               "confusion": [[1, 2], [3, 4]], "class_names": ["p0", "p1"]}
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return run


PER_IMAGE_ROWS = {"predictions.csv": ("path,label,prediction,confidence,p_p0,p_p1", "{path},p0,p0,0.9,0.9,0.1"),
                  "scores.csv": ("index,path,category,defect,label,score", "{index},{path},all,good,0,0.5")}


def _per_image_file(run, paths, name="predictions.csv"):
    """The per-image file an evaluation writes beside metrics.json: ``paths`` and made-up predictions or scores."""
    header, row = PER_IMAGE_ROWS[name]
    lines = [header, *(row.format(index=i, path=p) for i, p in enumerate(paths))]
    (run / "eval" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_mean_and_sample_sd_over_runs(tmp_path):
    accs, recalls = [0.70, 0.72, 0.69], [(0.9, 0.1), (0.95, 0.0), (0.85, 0.2)]
    runs = [_classification_run(tmp_path, f"s{i}", a, r) for i, (a, r) in enumerate(zip(accs, recalls))]
    rows = {r["key"]: r for r in over_runs.summarize(runs)}
    per_class = {f"per_class.{c}.{m}" for c in ("p0", "p1") for m in ("precision", "recall", "f1")}
    assert set(rows) == {"acc", "f1", *per_class}
    assert rows["acc"]["mean"] == pytest.approx(statistics.fmean(accs))
    assert rows["acc"]["sd"] == pytest.approx(statistics.stdev(accs))
    assert rows["per_class.p1.recall"]["values"] == [0.1, 0.0, 0.2]
    picked = over_runs.summarize(runs, ["acc", "per_class.*.recall"])
    assert [r["key"] for r in picked] == ["acc", "per_class.p0.recall", "per_class.p1.recall"]
    table = over_runs.markdown(picked, ["s0", "s1", "s2"])
    assert "| acc | 70.3 ± 1.5 | 70.0 | 72.0 | 69.0 |" in table


def test_anomaly_layout_and_undefined_metrics(tmp_path):
    metrics = {"mean": {"image_auroc": 0.6, "pixel_aupro": None}, "per_category": {"mono": {"image_auroc": 0.5}},
               "num_images": 400, "num_anomalous": 200}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    rows = {r["key"]: r for r in over_runs.summarize([path], ["mean.*"])}
    assert rows["mean.image_auroc"]["mean"] == pytest.approx(0.6) and rows["mean.image_auroc"]["sd"] is None
    assert np.isnan(rows["mean.pixel_aupro"]["mean"])


def test_undefined_metric_in_several_runs_is_nan_not_an_error(tmp_path, capsys):
    """An image metric of a category whose test images are all one class is written as null; over several runs it
    must give NaN for that metric and still summarise and compare the others."""
    paths = []
    for i, auroc in enumerate((0.6, 0.62, 0.61, 0.55, 0.56)):
        path = tmp_path / f"m{i}.json"
        path.write_text(json.dumps({"mean": {"i_auroc": auroc, "i_ap": None if i != 1 else 0.8}, "num_images": 9}))
        paths.append(str(path))
    rows = {r["key"]: r for r in over_runs.summarize(paths[:3])}
    assert np.isnan(rows["mean.i_ap"]["mean"]) and np.isnan(rows["mean.i_ap"]["sd"])
    assert rows["mean.i_auroc"]["sd"] == pytest.approx(statistics.stdev([0.6, 0.62, 0.61]))
    over_runs.main([*paths[:3], "--against", *paths[3:]])
    table = {line.split(" | ")[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert table["| mean.i_ap"].endswith("| n/a | n/a |")
    assert table["| mean.i_auroc"].startswith("| mean.i_auroc | 61.0 ± 1.0 | 55.5 ± 0.7 | +5.5 |")


def test_runs_that_cannot_be_compared_are_refused(tmp_path):
    a = _classification_run(tmp_path, "a", 0.7, (0.9, 0.1))
    b = _classification_run(tmp_path, "b", 0.7, (0.9, 0.1), num_images=602)
    with pytest.raises(ValueError, match="disagree on num_images"):
        over_runs.summarize([a, b])
    with pytest.raises(FileNotFoundError, match="expected a workdir holding eval/metrics.json"):
        over_runs.summarize([a, tmp_path / "nope"])
    c = _classification_run(tmp_path, "c", 0.7, (0.9, 0.1))
    metrics = json.loads((c / "eval" / "metrics.json").read_text())
    del metrics["f1"]
    (c / "eval" / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match="missing from some runs"):
        over_runs.summarize([a, c])


def test_runs_scored_on_other_images_of_the_same_count_are_refused(tmp_path):
    """Another split of one dataset (``data.source.seed``) has as many test images, so the counts agree; the paths in
    predictions.csv / scores.csv tell the sets apart, a copy of the dataset elsewhere does not, and a run without the
    file is left to the counts."""
    images = [f"cells/{i}.png" for i in range(4)]
    a, b, elsewhere, other, legacy = (_classification_run(tmp_path, n, 0.7, (0.9, 0.1), num_images=4)
                                      for n in ("a", "b", "elsewhere", "other", "legacy"))
    _per_image_file(a, [f"/data/elpv/{p}" for p in images])
    _per_image_file(b, [f"/data/elpv/{p}" for p in reversed(images)])
    _per_image_file(elsewhere, [f"/mnt/copy/elpv/{p}" for p in images])
    _per_image_file(other, [f"/data/elpv/cells/{i}.png" for i in (0, 1, 7, 8)])
    assert len(over_runs.summarize([a, b, elsewhere, legacy], ["acc"])[0]["values"]) == 4
    refused = (r"over_runs: .*a.eval.predictions\.csv and .*other.eval.predictions\.csv list different test images: "
               r"2 of the first's 4 are not among the second's 4 and 2 of the second's not among the first's "
               r"\(e\.g\. '2\.png' only in the first; paths below the folder each file's images share\)")
    with pytest.raises(ValueError, match=refused):
        over_runs.summarize([a, legacy, other], ["acc"])
    with pytest.raises(SystemExit, match="list different test images"):  # the baseline is read as the same set
        over_runs.main([str(a), str(b), "--against", str(elsewhere), str(other), "--keys", "acc"])
    ad, ad_other = (_classification_run(tmp_path, n, 0.7, (0.9, 0.1), num_images=3) for n in ("ad", "ad_other"))
    _per_image_file(ad, ["/mvtec/bottle/good/0.png", "/mvtec/bottle/crack/1.png", "/mvtec/bottle/crack/1.png"],
                    "scores.csv")  # a synthetic set: two defects drawn on one file
    _per_image_file(ad_other, ["/mvtec/bottle/good/0.png", "/mvtec/bottle/good/0.png", "/mvtec/bottle/crack/1.png"],
                    "scores.csv")
    with pytest.raises(ValueError, match=r"scores\.csv list different test images: 1 of the first's 3 .* "
                                         r"'crack/1\.png' only in the first"):
        over_runs.summarize([ad, ad_other], ["acc"])


def test_entry_added_later_compares_on_the_keys_all_runs_have(tmp_path):
    """A run evaluated after a new entry (``binary``, with its count) was added beside one evaluated before it: the
    shared metrics compare; the new entry's are refused as missing, not as other test data."""
    old = _classification_run(tmp_path, "old", 0.70, (0.9, 0.1))
    new = _classification_run(tmp_path, "new", 0.74, (0.9, 0.2))
    metrics = json.loads((new / "eval" / "metrics.json").read_text())
    metrics["binary"] = {"acc": 0.8, "num_positive": 205}
    (new / "eval" / "metrics.json").write_text(json.dumps(metrics))
    rows = over_runs.summarize([new, old], ["acc", "per_class.p1.recall"])
    assert [r["values"] for r in rows] == [[0.74, 0.70], [0.2, 0.1]]
    for order in ([new, old], [old, new]):
        with pytest.raises(ValueError, match=r"missing from some runs: .*old.*binary\.acc"):
            over_runs.summarize(order, ["acc", "binary.*"])


def test_thresholds_are_left_out_unless_asked_for(tmp_path):
    """Cuts on a model's own scale (the false-alarm cuts, p_f1max_threshold, added later) are not averaged by
    default, so runs evaluated before and after the threshold entry still summarise together."""
    old = _classification_run(tmp_path, "old", 0.70, (0.9, 0.1))
    new = _classification_run(tmp_path, "new", 0.74, (0.9, 0.2))
    metrics = json.loads((new / "eval" / "metrics.json").read_text())
    metrics["per_class"]["p1"]["p_f1max_threshold"] = 0.41
    metrics["at_false_alarms"] = {"pooled": {"1%": {"threshold": 0.9, "recall": 0.3}}}
    (new / "eval" / "metrics.json").write_text(json.dumps(metrics))
    keys = [r["key"] for r in over_runs.summarize([new])]
    assert "at_false_alarms.pooled.1%.recall" in keys and not [k for k in keys if k.endswith("threshold")]
    assert "per_class.p1.recall" in [r["key"] for r in over_runs.summarize([new, old], ["per_class.*"])]
    assert [r["values"] for r in over_runs.summarize([new], ["*threshold"])] == [[0.41], [0.9]]


def test_thresholds_and_errors_are_printed_as_stored(tmp_path, capsys):
    """A threshold is a cut on a model's score scale and pretraining's masked-pixel L1 an error in normalised units,
    not fractions: printed as stored, not times 100 under "(%)", and the header says so."""
    runs = []
    for i, cut in enumerate((0.2566, 0.2466, 0.30, 0.31)):
        run = _classification_run(tmp_path, f"s{i}", 0.7, (0.9, 0.1 * i))
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        metrics["per_class"]["p1"]["p_f1max_threshold"] = cut
        (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
        runs.append(str(run))
    over_runs.main([*runs[:2], "--keys", "*threshold"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| metric | mean ± sd (as stored) |")
    assert lines[2] == "| per_class.p1.p_f1max_threshold | 0.2516 ± 0.007071 | 0.2566 | 0.2466 |"
    over_runs.main([*runs[:2], "--keys", "per_class.p1.recall,*threshold"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| metric | mean ± sd (%; thresholds and errors as stored) |")
    assert lines[2:] == ["| per_class.p1.recall | 5.0 ± 7.1 | 0.0 | 10.0 |",
                         "| per_class.p1.p_f1max_threshold | 0.2516 ± 0.007071 | 0.2566 | 0.2466 |"]
    over_runs.main([*runs[2:], "--against", *runs[:2], "--keys", "*threshold"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| metric | runs, mean ± sd (as stored) | baseline, mean ± sd (as stored) |")
    assert lines[2].startswith("| per_class.p1.p_f1max_threshold | 0.305 ± 0.007071 | 0.2516 ± 0.007071 | +0.0534 |")
    pretrained = tmp_path / "pretrained.json"
    pretrained.write_text(json.dumps({"masked_l1": 0.4312, "masked_l1_std": 0.12, "num_images": 9}))
    assert "| masked_l1 | 0.4312 | 0.4312 |" in over_runs.markdown(over_runs.summarize([pretrained]), ["p"])


def test_command_line_prints_the_table(tmp_path, capsys):
    runs = [str(_classification_run(tmp_path, f"s{i}", 0.7, (0.9, 0.1))) for i in range(2)]
    over_runs.main([*runs, "--keys", "acc"])
    out = capsys.readouterr().out
    assert out.splitlines()[2] == "| acc | 70.0 ± 0.0 | 70.0 | 70.0 |"
    with pytest.raises(SystemExit, match="no metric matches"):
        over_runs.main([*runs, "--keys", "auroc"])
    with pytest.raises(SystemExit, match="error: .*nope: not found"):
        over_runs.main([*runs, str(tmp_path / "nope")])


def test_another_evaluation_folder(tmp_path, capsys):
    """``--eval eval_tta_d4`` reads that folder of each workdir (and of workdir baselines); files are read as given,
    so the same runs' plain evaluation is a baseline for what the views add."""
    runs = []
    for i, (plain, d4) in enumerate([(0.70, 0.72), (0.71, 0.74), (0.69, 0.73)]):
        run = _classification_run(tmp_path, f"s{i}", plain, (0.9, 0.1))
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        (run / "eval_tta_d4").mkdir()
        (run / "eval_tta_d4" / "metrics.json").write_text(json.dumps({**metrics, "acc": d4}))
        runs.append(run)
    rows = over_runs.summarize(runs, ["acc"], evaluation="eval_tta_d4")
    assert rows[0]["values"] == [0.72, 0.74, 0.73]
    plain = [str(r / "eval" / "metrics.json") for r in runs]
    over_runs.main([*map(str, runs), "--eval", "eval_tta_d4", "--keys", "acc", "--against", *plain])
    line = capsys.readouterr().out.splitlines()[2]
    assert line.startswith("| acc | 73.0 ± 1.0 | 70.0 ± 1.0 | +3.0 |"), line
    with pytest.raises(FileNotFoundError, match="holding eval_flips/metrics.json"):
        over_runs.summarize(runs, evaluation="eval_flips")


@pytest.mark.parametrize("t", [0.0, 0.4, 1.0, 2.5, 6.0, 30.0])
@pytest.mark.parametrize("df", [1.0, 1.6, 3.9, 4.0, 40.0])
def test_student_t_tail_against_scipy(t, df):
    from scipy import stats  # the independent reference; scipy comes with the test extra's scikit-learn
    assert over_runs.student_t_sf2(t, df) == pytest.approx(2 * stats.t.sf(t, df), abs=1e-9)
    assert over_runs.student_t_sf2(-t, df) == over_runs.student_t_sf2(t, df)


def test_welch_against_scipy_and_degenerate_spreads():
    from scipy import stats
    a, b = [0.759, 0.753, 0.736], [0.735, 0.729, 0.715, 0.72]
    got, want = over_runs.welch(a, b), stats.ttest_ind(a, b, equal_var=False)
    assert got["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert got["t"] == pytest.approx(want.statistic, rel=1e-12)
    assert got["df"] == pytest.approx(want.df, rel=1e-12)
    assert got["p"] == pytest.approx(want.pvalue, abs=1e-9)
    flat = over_runs.welch([0.7, 0.7], [0.6, 0.6])
    assert flat["diff"] == pytest.approx(0.1) and np.isnan(flat["t"]) and np.isnan(flat["p"])
    with pytest.raises(ValueError, match="at least two runs a side, got 1 and 2"):
        over_runs.welch([0.7], [0.6, 0.5])


def test_command_line_compares_against_a_baseline(tmp_path, capsys):
    runs = [str(_classification_run(tmp_path, f"new{i}", a, (0.9, 0.1))) for i, a in enumerate((0.76, 0.75, 0.74))]
    base = [str(_classification_run(tmp_path, f"old{i}", a, (0.9, 0.1))) for i, a in enumerate((0.73, 0.72, 0.71))]
    over_runs.main([*runs, "--against", *base, "--keys", "acc"])
    row = capsys.readouterr().out.splitlines()[2]
    assert row == "| acc | 75.0 ± 1.0 | 72.0 ± 1.0 | +3.0 | 3.67 (4.0) | 0.021 |"  # t = 0.03 / sqrt(2 * 1e-4 / 3)
    other = str(_classification_run(tmp_path, "other", 0.7, (0.9, 0.1), num_images=602))
    with pytest.raises(SystemExit, match="disagree on num_images"):
        over_runs.main([*runs, "--against", *base[:2], other])


def test_a_console_that_cannot_print_the_table_gets_it_escaped(tmp_path):
    """Run names (and the ±) that the output's encoding cannot hold, an ASCII console here (cp936 cannot print Korean
    either), are escaped instead of failing after the table is computed."""
    runs = [str(_classification_run(tmp_path, f"\uae01\ud798 s{i}", 0.7, (0.9, 0.1))) for i in range(2)]
    done = subprocess.run([sys.executable, "-m", "ssm_jax.metrics.over_runs", *runs, "--keys", "acc"],
                          env={**os.environ, "PYTHONIOENCODING": "ascii"}, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"| acc | 70.0 \\xb1 0.0 | 70.0 | 70.0 |" in done.stdout
    assert b"\\uae01\\ud798 s0" in done.stdout


def test_a_workdir_evaluated_only_with_test_time_augmentation_is_pointed_to_its_folder(tmp_path):
    """train.py with --config.eval.tta=flips writes eval_tta_flips/ and no eval/: the error says which --eval to
    pass."""
    run = _classification_run(tmp_path, "s0", 0.7, (0.9, 0.1))
    (run / "eval").rename(run / "eval_tta_flips")
    with pytest.raises(FileNotFoundError, match=r"it holds eval_tta_flips/metrics.json: pass --eval eval_tta_flips$"):
        over_runs.summarize([run])
    assert over_runs.summarize([run], evaluation="eval_tta_flips")[0]["key"]
