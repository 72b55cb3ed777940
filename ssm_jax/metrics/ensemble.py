"""Classification runs combined: the mean of their predicted class probabilities, scored like one run.

    python -m ssm_jax.metrics.ensemble runs/elpv_s0 runs/elpv_s1 runs/elpv_s2
    python -m ssm_jax.metrics.ensemble runs/elpv_s* runs/rn34_s* --eval eval_tta_d4

Each argument is a workdir (its ``eval/predictions.csv`` is read, as ``train.py`` and ``eval.py`` write it; ``--eval``
names another of its evaluations) or a ``predictions.csv`` itself. The runs must have scored the same images (paths
compared below the folder each run's images share) with the same labels and classes; a mismatch is an error naming
the run. Printed: each run's accuracy, then the ensemble's accuracy, macro F1 and per-class recall. Whether seeds or
networks make different mistakes shows here: an ensemble no better than its best member says they miss the same
images. The files hold probabilities to 4 decimals, so a near tie may break differently than in full precision.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from ssm_jax.metrics.classification import classification_metrics
from ssm_jax.metrics.over_runs import below_shared_folder, evaluation_file


def read_predictions(path: Path) -> dict:
    """{paths, labels (class names), classes, probs (N, classes)}, rows sorted by image path; paths are relative to
    the folder all of them share, so runs on copies of a dataset at different places (another machine, a packed copy
    unpacked elsewhere) match."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            classes = [c[2:] for c in reader.fieldnames or [] if c.startswith("p_")]
            rows = sorted(reader, key=lambda r: r["path"])
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 ({e.reason} at byte {e.start}): written before 2026-12-05 under "
                         f"another locale? Save it as UTF-8") from e
    if not classes or not rows or not {"path", "label"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a header path,label,...,p_<class>... and one row per image")
    try:
        probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: a probability column holds a non-number or is missing ({e})") from e
    return {"paths": below_shared_folder([r["path"] for r in rows]), "labels": [r["label"] for r in rows],
            "classes": classes, "probs": probs}


def ensemble(runs: list, evaluation: str = "eval") -> dict:
    """{accuracies (each run's), metrics (``classification_metrics`` of the mean probabilities), classes}."""
    if not runs:
        raise ValueError("ensemble: no runs given")
    read = [read_predictions(evaluation_file(r, evaluation, "predictions.csv", "train.py or eval.py for a classifier"))
            for r in runs]
    first = read[0]
    for run, other in zip(runs[1:], read[1:]):
        for key in ("classes", "paths", "labels"):
            if other[key] != first[key]:
                below = " (below the folder they share)" if key == "paths" else ""
                raise ValueError(f"ensemble: {run} differs from {runs[0]} in its {key}{below}; the runs must have "
                                 f"scored the same images with the same classes")
    unknown = sorted(set(first["labels"]) - set(first["classes"]))
    if unknown:
        raise ValueError(f"ensemble: labels {unknown} in {runs[0]} are not among its classes {first['classes']}")
    labels = np.array([first["classes"].index(name) for name in first["labels"]])
    accuracies = [float(np.mean(r["probs"].argmax(-1) == labels)) for r in read]
    mean = np.mean([r["probs"] for r in read], axis=0)
    return {"accuracies": accuracies, "classes": first["classes"],
            "metrics": classification_metrics(labels, mean.argmax(-1), len(first["classes"]))}


def markdown(result: dict, runs: list) -> str:
    """Each run's accuracy, then the ensemble's accuracy, macro F1 and per-class recall, in percent."""
    lines = ["| run | ACC (%) |", "|---|---:|"]
    lines += [f"| {run} | {100 * acc:.1f} |" for run, acc in zip(runs, result["accuracies"])]
    m = result["metrics"]
    recalls = ", ".join(f"{c} {100 * r:.1f}" for c, r in zip(result["classes"], m["per_class"]["recall"]))
    lines += ["", f"ensemble of {len(runs)}: ACC {100 * m['acc']:.1f} %, macro F1 {100 * m['f1']:.1f} %, "
                  f"recall {recalls}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="workdirs or predictions.csv files")
    parser.add_argument("--eval", default="eval", metavar="FOLDER", help="the evaluation folder read in each "
                        "workdir (default: eval; eval.py --config.eval.tta=d4 writes eval_tta_d4)")
    args = parser.parse_args(argv)
    try:
        result = ensemble(args.runs, args.eval)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    if hasattr(sys.stdout, "reconfigure"):  # names a console or file encoding cannot hold (cp936, ASCII): escaped
        sys.stdout.reconfigure(errors="backslashreplace")
    print(markdown(result, args.runs), end="")


if __name__ == "__main__":
    main()
