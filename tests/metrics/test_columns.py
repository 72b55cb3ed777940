"""Terminal columns for names in scripts whose characters take two cells: the reports' tables stay aligned."""

import unicodedata

from ssm_jax.metrics import display_width, left_justified
from ssm_jax.training import classification, reconstruction


def test_display_width_counts_wide_characters_twice_and_combining_marks_not_at_all():
    assert display_width("crack") == 5
    assert display_width("划痕") == 4 and display_width("良品 A") == 6  # CJK ideographs, then a space and a letter
    assert display_width("ﾃｽﾄ") == 3 and display_width("テスト") == 6  # half-width, then full-width katakana
    assert display_width(unicodedata.normalize("NFD", "Öl")) == 2  # O + combining diaeresis + l
    assert display_width("균열") == 4  # Hangul syllables
    assert left_justified("划痕", 7) == "划痕   " and left_justified("crack", 3) == "crack"


def _cells_before_numbers(report: str, rows: list[str]) -> list[int]:
    """For each row whose name starts it, the terminal cells before its first number."""
    cells = []
    for line in report.splitlines():
        name = next((row for row in rows if line.startswith(row)), None)
        if name is not None:
            body = line[len(name):]
            cells.append(display_width(name) + len(body) - len(body.lstrip(" ")))
    return cells


def test_classification_report_columns_line_up_for_cjk_and_long_class_names():
    metrics = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 3}
    names = ["良品", "划痕", "crack", "a_class_name_longer_than_the_default_width"]
    summary = {"per_class": {name: metrics for name in names}, "precision": 0.5, "recall": 0.5, "f1": 0.5,
               "num_images": 12, "acc": 0.5}
    report = classification.format_report(summary)
    cells = _cells_before_numbers(report, names + ["macro"])
    assert len(cells) == 5 and len(set(cells)) == 1, report
    header = report.splitlines()[0]
    assert header.index("precision") + len("precision") == cells[0] + len("0.5000"), report


def test_anomaly_report_columns_line_up_for_cjk_category_names():
    metrics = {key: 0.5 for key, _ in reconstruction.COLUMNS}
    names = ["外壳", "部品_金属", "screw"]
    summary = {"per_category": {name: metrics for name in names}, "mean": metrics, "num_images": 9,
               "num_anomalous": 3, "num_unreadable": 0, "at_false_alarms": {"pooled": {}}}
    report = reconstruction.format_report(summary)
    cells = _cells_before_numbers(report, names + ["mean"])
    assert len(cells) == 4 and len(set(cells)) == 1, report
