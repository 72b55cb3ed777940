"""A model's train step in this tree against another revision's, interleaved on one GPU in one call.

    python benchmarks/train_ab.py export 0854248 .data/train_base        # here: the revision's code, for the device
    python benchmarks/train_ab.py run .data/train_base --rounds 2 -- --sizes tiny --steps 30     # MemoryMamba
    python benchmarks/train_ab.py run .data/train_base --script mambaad_throughput.py -- --impl ours --steps 20

``export`` writes ``git archive REV`` of the code a step needs (benchmarks, configs, kernels, ssm_jax) to DIR; carry
DIR to the GPU machine with the working tree. ``run`` runs ``--script`` (``train_throughput.py``, MemoryMamba's
step, or ``mambaad_throughput.py``, MambaAD's train and inference steps; the arguments after ``--``)
``--rounds`` times in each tree, alternating: this tree, then DIR's, then this tree... A change to the step moves it
by a few percent, and the same code read 529-556 images/s on two H100 leases (docs/benchmarks.md, session 57): only
runs in one call, interleaved, compare. Each run is its own process, with ``PYTHONPATH`` naming its tree, so it
imports that tree's ``ssm_jax`` and ``kernels`` whatever is installed. Passes each run's output on as it comes, with
a line per run, then prints per row (a size, or MambaAD's phase) the median images/s of each tree and their ratio
(above 1: this tree is faster).

Each tree's runs share a persistent compilation cache of their own (``JAX_COMPILATION_CACHE_DIR``, in a temporary
folder; ``--no-cache`` compiles every run): the first run compiles the initialisation and the step (on a lent H100
about 90 and 70 s, session 58, where a whole run took 2.5-3 minutes and a 2-round A/B outran its 10-minute call), the
later ones load them. A tree's later runs then run the executables of its first, so the rounds sample the device's
variation, not XLA's autotuning, and their "compile (s)" is the cache's load time.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks.rows import extract_revision  # noqa: E402

CODE = ("benchmarks", "configs", "kernels", "ssm_jax")  # what a train step imports
SCRIPTS = ("train_throughput.py", "mambaad_throughput.py")
# mambaad_throughput.py's row: "<impl> train batch 16 64.6 ms 247.6 images/s (<device>)", and the same for inference.
PHASE_ROW = re.compile(r"\s(train|inference)\s+batch\s+\d+\s+[\d.]+ ms\s+([\d.]+) images/s")


def rows(output: str) -> dict[str, float]:
    """Size -> images/s from ``train_throughput.py``'s printed table (a row: size, params, compile, step, images/s,
    ...), and phase -> images/s from ``mambaad_throughput.py``'s rows: the one output every revision's scripts have,
    older ones included."""
    found = {}
    for line in output.splitlines():
        fields = line.split()
        phase = PHASE_ROW.search(line)
        if phase:
            found[phase.group(1)] = float(phase.group(2))
        elif len(fields) >= 5 and not line.startswith("#") and fields[1].replace(",", "").isdigit():
            found[fields[0]] = float(fields[4])
    return found


def run_tree(tree: str, throughput_args: list[str], cache_dir: str | None = None,
             script: str = SCRIPTS[0]) -> dict[str, float]:
    """``script`` of ``tree`` with ``throughput_args`` in a process of its own, its output passed on as it comes (a
    call cut off keeps what was printed), with JAX's persistent compilation cache in ``cache_dir`` (None: none); its
    rows."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tree, os.environ.get("PYTHONPATH")]))
    if cache_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    printed = []
    with subprocess.Popen([sys.executable, os.path.join(tree, "benchmarks", script), *throughput_args],
                          cwd=tree, env=env, stdout=subprocess.PIPE, text=True) as child:
        for line in child.stdout:
            print(f"    {line}", end="", flush=True)
            printed.append(line)
    found = rows("".join(printed))
    if child.returncode or not found:
        raise SystemExit(f"train_ab.py: {script} in {tree} failed (exit {child.returncode}); its output and errors "
                         "are above")
    return found


def interleave(base_dir: str, rounds: int, throughput_args: list[str], run=run_tree,
               cache_root: str | None = None, script: str = SCRIPTS[0]) -> dict[str, dict]:
    """``rounds`` runs of ``script`` in each tree, this tree first, alternating, each tree's with its own compilation
    cache under ``cache_root`` (None: none); per label ("tree", "base"), row -> readings."""
    if not os.path.isfile(os.path.join(base_dir, "benchmarks", script)):
        raise SystemExit(f"train_ab.py: {base_dir} has no benchmarks/{script}: run train_ab.py export REV "
                         f"{base_dir} first (where the git checkout is) and carry {base_dir}")
    readings = {"tree": {}, "base": {}}
    for i in range(rounds):
        for label, tree in (("tree", REPO), ("base", os.path.abspath(base_dir))):
            cache_dir = os.path.join(cache_root, label) if cache_root else None
            for row, rate in run(tree, throughput_args, cache_dir, script).items():
                readings[label].setdefault(row, []).append(rate)
                print(f"round {i + 1}  {label:<5}{row:<7}{rate:10.1f} images/s", flush=True)
    return readings


def summary(readings: dict[str, dict]) -> str:
    """Per row (size or phase): each tree's median images/s and their ratio, this tree over the base."""
    lines = [f"{'row':<10}{'tree':>10}{'base':>10}{'ratio':>8}  (median images/s; ratio above 1: the tree is faster)"]
    for row, tree in readings["tree"].items():
        mine, theirs = statistics.median(tree), statistics.median(readings["base"][row])
        lines.append(f"{row:<10}{mine:10.1f}{theirs:10.1f}{mine / theirs:8.3f}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    exporting = commands.add_parser("export", help="write a revision's code to DIR")
    exporting.add_argument("rev")
    exporting.add_argument("dir")
    running = commands.add_parser("run", help="time this tree against DIR's, interleaved")
    running.add_argument("dir")
    running.add_argument("--rounds", type=int, default=2)
    running.add_argument("--no-cache", action="store_true", help="compile every run (no persistent cache)")
    running.add_argument("--script", default=SCRIPTS[0], choices=SCRIPTS, help="the benchmark each run times")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)  # after it: the script's arguments
    args = parser.parse_args(argv[:split])
    if args.command == "export":
        extract_revision(args.rev, CODE, args.dir, "train_ab.py")
        print(f"wrote {', '.join(CODE)} of {args.rev} to {args.dir}")
        return
    cache_root = None if args.no_cache else tempfile.mkdtemp(prefix="train_ab_cache_")
    print(summary(interleave(args.dir, args.rounds, argv[split + 1:], cache_root=cache_root, script=args.script)))


if __name__ == "__main__":
    main()
