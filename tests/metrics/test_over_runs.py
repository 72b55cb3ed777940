"""``python -m ssm_jax.metrics.over_runs``: mean and sample standard deviation over runs against ``statistics``, key
patterns, and runs that cannot be compared (other test sets, missing metrics, missing files) refused by name."""

import json
import statistics

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


def test_command_line_prints_the_table(tmp_path, capsys):
    runs = [str(_classification_run(tmp_path, f"s{i}", 0.7, (0.9, 0.1))) for i in range(2)]
    over_runs.main([*runs, "--keys", "acc"])
    out = capsys.readouterr().out
    assert out.splitlines()[2] == "| acc | 70.0 ± 0.0 | 70.0 | 70.0 |"
    with pytest.raises(SystemExit, match="no metric matches"):
        over_runs.main([*runs, "--keys", "auroc"])
    with pytest.raises(SystemExit, match="error: .*nope: not found"):
        over_runs.main([*runs, str(tmp_path / "nope")])
