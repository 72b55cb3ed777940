"""Mean ± sample standard deviation of evaluation metrics over runs (seeds), as papers and the README report them.

    python -m ssm_jax.metrics.over_runs runs/elpv_s0 runs/elpv_s1 runs/elpv_s2
    python -m ssm_jax.metrics.over_runs runs/ad_s* --keys "mean.*"          # MambaAD / SNARM: the mean over categories
    python -m ssm_jax.metrics.over_runs runs/elpv_s* --keys acc,f1,"per_class.*.recall"

    python -m ssm_jax.metrics.over_runs runs/ft_s* --against runs/elpv_s* --keys acc,f1   # is the change real?
    python -m ssm_jax.metrics.over_runs runs/elpv_s* --eval eval_tta_d4   # the runs evaluated over 8 views
    python -m ssm_jax.metrics.over_runs runs/elpv_s* --eval eval_tta_d4 --against runs/elpv_s*/eval/metrics.json

Each argument is a workdir (its ``eval/metrics.json`` is read, as ``train.py`` and ``eval.py`` write it; ``--eval``
names another of its evaluations, e.g. ``eval_tta_d4``, which ``--against`` runs use too unless given as files) or a
``metrics.json`` itself. Fractions are printed in percent. Counts (``num_images``, ``support``, ...) must agree
across the runs that have them: runs scored on different test sets are not comparable, so a mismatch is an error that
names them.

``--against`` compares with a baseline's runs (at least two a side): the difference of the means, Welch's t (the
unequal-variance two-sample t statistic), its Welch-Satterthwaite degrees of freedom and the two-sided p-value, so
"a lead" and "a finding" rest on a number rather than on eyeballing the spreads.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
from pathlib import Path

import numpy as np


def evaluation_file(run: str | Path, evaluation: str, name: str, writer: str = "train.py or eval.py") -> Path:
    """The file ``name`` of a workdir's ``evaluation`` folder (``<run>/eval/<name>``), or ``run`` itself when it is
    a file; a missing one names what was expected and what writes it."""
    path = Path(run)
    if path.is_dir():
        path = path / evaluation / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected a workdir holding {evaluation}/{name} (written by "
                                f"{writer}) or a {name} file")
    return path


def metrics_path(run: str | Path, evaluation: str = "eval") -> Path:
    """The metrics.json of a workdir's ``evaluation`` folder (``<run>/eval/metrics.json``) or the file itself."""
    return evaluation_file(run, evaluation, "metrics.json")


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


def summarize(runs: list, keys: list[str] | None = None, evaluation: str = "eval") -> list[dict]:
    """Rows of {key, mean, sd, values} (fractions, not percent) over ``runs`` (workdirs, read in their
    ``evaluation`` folder, or metrics.json files) for the keys matching ``keys`` (fnmatch patterns; None: all but
    thresholds, ``is_cut``); sd is None for one run. Raises if the runs' counts differ."""
    if not runs:
        raise ValueError("over_runs: no runs given")
    paths = [metrics_path(r, evaluation) for r in runs]
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
    """A Markdown table, values in percent: metric | runs | baseline | difference | Welch's t (df) | p."""
    header = "| metric | runs, mean ± sd (%) | baseline, mean ± sd (%) | difference | Welch's t (df) | p, two-sided |"
    lines = [header, "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        test = row["test"]
        t = "n/a" if math.isnan(test["t"]) else f"{test['t']:.2f} ({test['df']:.1f})"
        p = "n/a" if math.isnan(test["p"]) else f"{test['p']:.3f}"
        lines.append(f"| {row['key']} | {100 * row['mean']:.1f} ± {100 * row['sd']:.1f} | "
                     f"{100 * row['base']['mean']:.1f} ± {100 * row['base']['sd']:.1f} | {100 * test['diff']:+.1f} | "
                     f"{t} | {p} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], runs: list) -> str:
    """A Markdown table, values in percent: metric | mean ± sd | one column per run."""
    lines = ["| metric | mean ± sd (%) | " + " | ".join(str(r) for r in runs) + " |",
             "|---|---:|" + "---:|" * len(runs)]
    for row in rows:
        spread = "" if row["sd"] is None else f" ± {100 * row['sd']:.1f}"
        cells = " | ".join(f"{100 * v:.1f}" for v in row["values"])
        lines.append(f"| {row['key']} | {100 * row['mean']:.1f}{spread} | {cells} |")
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
