"""Mean ± sample standard deviation of evaluation metrics over runs (seeds), as papers and the README report them.

    python -m ssm_jax.metrics.over_runs runs/elpv_s0 runs/elpv_s1 runs/elpv_s2
    python -m ssm_jax.metrics.over_runs runs/ad_s* --keys "mean.*"          # MambaAD / SNARM: the mean over categories
    python -m ssm_jax.metrics.over_runs runs/elpv_s* --keys acc,f1,"per_class.*.recall"

    python -m ssm_jax.metrics.over_runs runs/ft_s* --against runs/elpv_s* --keys acc,f1   # is the change real?
    python -m ssm_jax.metrics.over_runs runs/elpv_s* --eval eval_tta_d4   # the runs evaluated over 8 views
    python -m ssm_jax.metrics.over_runs runs/elpv_s* --eval eval_tta_d4 --against runs/elpv_s*/eval/metrics.json

Each argument is a workdir (its ``eval/metrics.json`` is read, as ``train.py`` and ``eval.py`` write it; ``--eval``
names another of its evaluations, e.g. ``eval_tta_d4``, which ``--against`` runs use too unless given as files) or a
``metrics.json`` itself. Fractions are printed in percent; thresholds (cuts on a model's score scale) and errors in
the data's units (pretraining's masked-pixel L1) as stored. Runs scored on different test sets are not comparable, so
the test images each run scored (the paths in the ``predictions.csv`` or ``scores.csv`` beside its ``metrics.json``)
and the counts (``num_images``, ``support``, ...) must agree across the runs that have them; a mismatch is an error
that names the runs.

``--against`` compares with a baseline's runs (at least two a side): the difference of the means, Welch's t (the
unequal-variance two-sample t statistic), its Welch-Satterthwaite degrees of freedom and the two-sided p-value, so
"a lead" and "a finding" rest on a number rather than on eyeballing the spreads.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np


def evaluation_file(run: str | Path, evaluation: str, name: str, writer: str = "train.py or eval.py") -> Path:
    """The file ``name`` of a workdir's ``evaluation`` folder (``<run>/eval/<name>``), or ``run`` itself when it is
    a file; a missing one names what was expected and what writes it."""
    path = Path(run)
    if path.is_dir():
        path = path / evaluation / name
    if not path.is_file():
        others = sorted(p.parent.name for p in Path(run).glob(f"eval*/{name}")) if Path(run).is_dir() else []
        hint = f"; it holds {', '.join(f'{o}/{name}' for o in others)}: pass --eval {others[0]}" if others else ""
        raise FileNotFoundError(f"{path}: not found; expected a workdir holding {evaluation}/{name} (written by "
                                f"{writer}) or a {name} file{hint}")
    return path


def metrics_path(run: str | Path, evaluation: str = "eval") -> Path:
    """The metrics.json of a workdir's ``evaluation`` folder (``<run>/eval/metrics.json``) or the file itself."""
    return evaluation_file(run, evaluation, "metrics.json")


PER_IMAGE_FILES = ("predictions.csv", "scores.csv")  # a classifier's, an anomaly detector's: a row per test image


def per_image_file(metrics: Path) -> Path | None:
    """The per-image file an evaluation wrote beside its ``metrics`` (``PER_IMAGE_FILES``); None where there is none
    (a metrics.json copied alone, or an evaluation that writes none)."""
    return next((metrics.parent / n for n in PER_IMAGE_FILES if (metrics.parent / n).is_file()), None)


def scored_images(path: Path) -> list[str]:
    """The sorted image paths of a per-image file's rows (``below_shared_folder``), as ``ensemble`` compares them. A
    path repeats where a synthetic test set draws several defects on one file."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            paths = [row["path"] for row in reader] if "path" in (reader.fieldnames or []) else None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 ({e.reason} at byte {e.start}); save it as UTF-8") from e
    if paths is None:
        raise ValueError(f"{path}: expected a header with a path column and one row per test image")
    return sorted(below_shared_folder(paths))


def below_shared_folder(paths: list[str]) -> list[str]:
    """``paths`` relative to the folder they all lie in, so that two runs on copies of a dataset at different places
    list the same images."""
    if not paths:
        return []
    shared = os.path.commonpath([os.path.dirname(p) for p in paths])
    return [os.path.relpath(p, shared) for p in paths]


def check_same_images(metrics: list[Path]) -> None:
    """Raises if a run scored other test images than the first run with a per-image file; runs without one are
    checked by their counts alone (``summarize``), which test sets of the same size pass."""
    scored = [(f, scored_images(f)) for f in map(per_image_file, metrics) if f is not None]
    for other, images in scored[1:]:
        if images != scored[0][1]:
            raise ValueError(different_images(*scored[0], other, images))


def different_images(first: Path, ours: list[str], other: Path, theirs: list[str]) -> str:
    """The error for two runs that scored different test images: how many of each are not the other's, and one."""
    only_ours, only_theirs = Counter(ours) - Counter(theirs), Counter(theirs) - Counter(ours)
    example = f"{min(only_ours)!r} only in the first" if only_ours else f"{min(only_theirs)!r} only in the second"
    return (f"over_runs: {first} and {other} list different test images: {only_ours.total()} of the first's "
            f"{len(ours)} are not among the second's {len(theirs)} and {only_theirs.total()} of the second's not among "
            f"the first's (e.g. {example}; paths below the folder each file's images share); runs scored on different "
            f"test sets are not comparable")


def flatten(tree: dict, prefix: str = "") -> dict[str, float | int]:
    """Numeric leaves of a metrics.json as dotted keys (``per_class.p0.recall``); null (an undefined metric) becomes
    NaN; lists, strings and booleans are dropped."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif value is None:
            out[name] = float("nan")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def is_count(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return last.startswith("num_") or last == "support"


def is_cut(key: str) -> bool:
    """A threshold (``at_false_alarms.pooled.1%.threshold``, ``p_f1max_threshold``): a cut on one model's own score
    scale, not a metric to average over runs; summarised only by a ``keys`` pattern that says "threshold"."""
    last = key.rsplit(".", 1)[-1]
    return last == "threshold" or last.endswith("_threshold")


def is_fraction(key: str) -> bool:
    """A share in [0, 1] (accuracy, recall, AU-ROC, false alarms, ...), printed in percent. Not one: a threshold
    (``is_cut``) and pretraining's masked-pixel L1 (``masked_l1``, ``masked_l1_std``, ``per_image.<path>``), in the
    data's normalised units; counts are not printed."""
    return not (is_cut(key) or key.startswith(("masked_l1", "per_image.")))


def unit(rows: list[dict]) -> str:
    """The header's unit for ``rows``: percent where all are fractions (``is_fraction``), else what is stored."""
    fractions = [is_fraction(row["key"]) for row in rows]
    if all(fractions):
        return "%"
    return "%; thresholds and errors as stored" if any(fractions) else "as stored"


def number(value: float, key: str, sign: str = "") -> str:
    """``value`` of metric ``key`` as printed: a fraction in percent to 0.1, anything else as stored to 4 significant
    digits (a threshold on a score scale may be 0.02 or 1,200); ``sign`` "+" signs a difference."""
    return f"{100 * value:{sign}.1f}" if is_fraction(key) else f"{value:{sign}.4g}"


def summarize(runs: list, keys: list[str] | None = None, evaluation: str = "eval") -> list[dict]:
    """Rows of {key, mean, sd, values} (fractions, not percent) over ``runs`` (workdirs, read in their
    ``evaluation`` folder, or metrics.json files) for the keys matching ``keys`` (fnmatch patterns; None: all but
    thresholds, ``is_cut``); sd is None for one run. Raises if the runs' test images (``check_same_images``) or counts
    differ."""
    if not runs:
        raise ValueError("over_runs: no runs given")
    paths = [metrics_path(r, evaluation) for r in runs]
    check_same_images(paths)
    flat = [flatten(json.loads(p.read_text(encoding="utf-8"))) for p in paths]
    for key in sorted({k for f in flat for k in f if is_count(k)}):
        # A count some runs lack (a metrics.json written before that entry existed) is not a disagreement; the
        # metrics beside it, if asked for, are refused below as missing.
        seen = {str(p): f[key] for p, f in zip(paths, flat) if key in f}
        if len(set(seen.values())) > 1:
            raise ValueError(f"over_runs: the runs disagree on {key}: {seen}; they were scored on different data")
    # Keys from every run, not the first alone: a metric only a later run has is refused below as missing, whatever
    # the order the runs are given in.
    every_key = dict.fromkeys(k for f in flat for k in f)
    names = [k for k in every_key if not is_count(k) and any(  # a cut only where a pattern names thresholds
        fnmatch.fnmatch(k, p) and (not is_cut(k) or "threshold" in p) for p in keys or ["*"])]
    missing = {str(p): [k for k in names if k not in f] for p, f in zip(paths, flat)}
    missing = {p: m for p, m in missing.items() if m}
    if missing:
        raise ValueError(f"over_runs: metrics missing from some runs: {missing}")
    return [{"key": key, **spread([float(f[key]) for f in flat])} for key in names]


def spread(values: list[float]) -> dict:
    """{mean, sd, values}; sd (sample) is None for one value; NaN where a run has NaN (an undefined metric)."""
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "values": values}


def student_t_sf2(t: float, df: float) -> float:
    """Two-sided tail probability P(|T| >= |t|) of Student's t with ``df`` (real, > 0) degrees of freedom: one minus
    twice the density's integral from 0 to |t|, by Simpson's rule on 4,000 panels of the substitution x = |t| u^2
    (which keeps the integrand smooth for large |t|), accurate to about 1e-9 for the t and df of a few seeds."""
    if not df > 0:
        raise ValueError(f"student_t_sf2: degrees of freedom must be positive, got {df}")
    t = abs(t)
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    u = np.linspace(0.0, 1.0, 4001)
    x = t * u * u
    f = np.exp(log_norm - (df + 1) / 2 * np.log1p(x * x / df)) * 2 * t * u  # density(x) dx/du
    weights = np.ones_like(u)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    return float(min(max(1.0 - 2.0 * (u[1] - u[0]) / 3 * np.dot(weights, f), 0.0), 1.0))


def welch(a: list[float], b: list[float]) -> dict:
    """Welch's two-sample test of mean(a) - mean(b): {diff, t, df, p}; t, df and p are NaN when both spreads are 0
    or a value is NaN (an undefined metric)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"welch: needs at least two runs a side, got {len(a)} and {len(b)}")
    va, vb = float(np.var(a, ddof=1)) / len(a), float(np.var(b, ddof=1)) / len(b)
    diff = float(np.mean(a)) - float(np.mean(b))
    if not va + vb > 0:
        return {"diff": diff, "t": math.nan, "df": math.nan, "p": math.nan}
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    t = diff / math.sqrt(va + vb)
    return {"diff": diff, "t": t, "df": df, "p": student_t_sf2(t, df)}


def compare(runs: list, baseline: list, keys: list[str] | None = None, evaluation: str = "eval") -> list[dict]:
    """``summarize`` rows of ``runs``, each with ``base`` (the baseline's ``spread``) and ``test`` (``welch`` of the
    two); read as one set of runs, so both groups must have been scored on the same data."""
    rows = []
    for row in summarize([*runs, *baseline], keys, evaluation):
        new, old = row["values"][:len(runs)], row["values"][len(runs):]
        rows.append({"key": row["key"], **spread(new), "base": spread(old), "test": welch(new, old)})
    return rows


def comparison_markdown(rows: list[dict]) -> str:
    """A Markdown table, values in ``unit``: metric | runs | baseline | difference | Welch's t (df) | p."""
    u = unit(rows)
    lines = [f"| metric | runs, mean ± sd ({u}) | baseline, mean ± sd ({u}) | difference | Welch's t (df) | "
             "p, two-sided |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        key, test = row["key"], row["test"]
        t = "n/a" if math.isnan(test["t"]) else f"{test['t']:.2f} ({test['df']:.1f})"
        p = "n/a" if math.isnan(test["p"]) else f"{test['p']:.3f}"
        lines.append(f"| {key} | {number(row['mean'], key)} ± {number(row['sd'], key)} | "
                     f"{number(row['base']['mean'], key)} ± {number(row['base']['sd'], key)} | "
                     f"{number(test['diff'], key, '+')} | {t} | {p} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], runs: list) -> str:
    """A Markdown table, values in ``unit``: metric | mean ± sd | one column per run."""
    lines = [f"| metric | mean ± sd ({unit(rows)}) | " + " | ".join(str(r) for r in runs) + " |",
             "|---|---:|" + "---:|" * len(runs)]
    for row in rows:
        key = row["key"]
        spread = "" if row["sd"] is None else f" ± {number(row['sd'], key)}"
        cells = " | ".join(number(v, key) for v in row["values"])
        lines.append(f"| {key} | {number(row['mean'], key)}{spread} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="workdirs or metrics.json files")
    parser.add_argument("--keys", help="comma-separated patterns of dotted metric keys (default: all)")
    parser.add_argument("--eval", default="eval", metavar="FOLDER", help="the evaluation folder read in each "
                        "workdir (default: eval; eval.py --config.eval.tta=d4 writes eval_tta_d4)")
    parser.add_argument("--against", nargs="+", metavar="RUN", help="a baseline's runs: print the difference, "
                        "Welch's t and its p-value instead of the per-run columns")
    args = parser.parse_args(argv)
    keys = args.keys.split(",") if args.keys else None
    try:
        rows = (compare(args.runs, args.against, keys, args.eval) if args.against
                else summarize(args.runs, keys, args.eval))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    if not rows:
        raise SystemExit(f"no metric matches --keys={args.keys}")
    if hasattr(sys.stdout, "reconfigure"):  # names a console or file encoding cannot hold (cp936, ASCII): escaped
        sys.stdout.reconfigure(errors="backslashreplace")
    print(comparison_markdown(rows) if args.against else markdown(rows, args.runs), end="")


if __name__ == "__main__":
    main()
