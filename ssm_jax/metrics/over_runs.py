"""Mean ± sample standard deviation of evaluation metrics over runs (seeds), as papers and the README report them.

    python -m ssm_jax.metrics.over_runs runs/elpv_s0 runs/elpv_s1 runs/elpv_s2
    python -m ssm_jax.metrics.over_runs runs/ad_s* --keys "mean.*"          # MambaAD / SNARM: the mean over categories
    python -m ssm_jax.metrics.over_runs runs/elpv_s* --keys acc,f1,"per_class.*.recall"

Each argument is a workdir (its ``eval/metrics.json`` is read, as ``train.py`` and ``eval.py`` write it) or a
``metrics.json`` itself. Fractions are printed in percent. Counts (``num_images``, ``support``, ...) must agree
across the runs: runs scored on different test sets are not comparable, so a mismatch is an error that names them.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
from pathlib import Path


def metrics_path(run: str | Path) -> Path:
    """The metrics.json of a workdir (``<run>/eval/metrics.json``) or the file itself."""
    path = Path(run)
    if path.is_dir():
        path = path / "eval" / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected a workdir holding eval/metrics.json (written by "
                                f"train.py or eval.py) or a metrics.json file")
    return path


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


def summarize(runs: list, keys: list[str] | None = None) -> list[dict]:
    """Rows of {key, mean, sd, values} (fractions, not percent) over ``runs`` for the keys matching ``keys``
    (fnmatch patterns; None: all); sd is None for one run. Raises if the runs' counts differ."""
    if not runs:
        raise ValueError("over_runs: no runs given")
    paths = [metrics_path(r) for r in runs]
    flat = [flatten(json.loads(p.read_text())) for p in paths]
    for key in sorted({k for f in flat for k in f if is_count(k)}):
        seen = {str(p): f.get(key) for p, f in zip(paths, flat)}
        if len(set(seen.values())) > 1:
            raise ValueError(f"over_runs: the runs disagree on {key}: {seen}; they were scored on different data")
    names = [k for k in flat[0] if not is_count(k) and (keys is None or any(fnmatch.fnmatch(k, p) for p in keys))]
    missing = {str(p): [k for k in names if k not in f] for p, f in zip(paths, flat)}
    missing = {p: m for p, m in missing.items() if m}
    if missing:
        raise ValueError(f"over_runs: metrics missing from some runs: {missing}")
    rows = []
    for key in names:
        values = [float(f[key]) for f in flat]
        rows.append({"key": key, "mean": statistics.fmean(values),
                     "sd": statistics.stdev(values) if len(values) > 1 else None, "values": values})
    return rows


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
    args = parser.parse_args(argv)
    keys = args.keys.split(",") if args.keys else None
    try:
        rows = summarize(args.runs, keys)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    if not rows:
        raise SystemExit(f"no metric matches --keys={args.keys}")
    print(markdown(rows, args.runs), end="")


if __name__ == "__main__":
    main()
