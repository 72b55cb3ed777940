"""The README's quick start, timed: wall time of train + evaluate per seed, split, with the test accuracy.

    python -m benchmarks.quickstart                       # configs/memorymamba_elpv.py:cpu, seeds 0,1,2
    python -m benchmarks.quickstart --seeds 0 --workdir /tmp/qs --config.train.epochs=2

Each seed runs in a fresh process on a fresh workdir (nothing compiled or cached before, as after a clone) the
same code as ``python train.py --config=<config> --workdir=<dir> --config.seed=<seed>``, and prints one row:

  total      wall time of the whole process, interpreter start to exit, as the parent process sees it
  startup    imports, config, dataset listing, model initialisation (its compile included)
  compile    the first train step: tracing, compiling and running it
  data wait  time the loop was blocked on the input pipeline (``data_wait_s`` summed over metrics.jsonl)
  compute    the rest of training: the other steps, metric flushes, checkpoints, the training-curves PNG
  eval       evaluation on the test split (its compile included) and its outputs
  max pause  the longest time between two finished train steps after the first (checkpoints included)
  CPU        CPU time of the run's process, all threads (a busy machine stretches wall time, much less this)

then the mean and sample standard deviation over seeds. The machine's load average before and after each run is
printed too: on a shared machine a busy neighbour shows up there and in total / CPU, not in the split.
``--config.*`` flags are passed to every run (``--config.seed`` is set per seed).

    python -m benchmarks.quickstart --step-time 10 [--config.model.d_state=16 ...]

times the config's train step alone instead: median wall and CPU seconds of ``--step-time`` steps on one fixed
batch after the compile, the cost a variant's model sets for the whole run.
"""

from __future__ import annotations

import time

_START = time.perf_counter()  # before the heavy imports, so a run's startup includes them

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULT = "quickstart.json"
CHILD, STEP_CHILD = "--one-run", "--one-step-time"
COLUMNS = (("total_s", "total"), ("startup_s", "startup"), ("compile_s", "compile"), ("data_wait_s", "data wait"),
           ("compute_s", "compute"), ("eval_s", "eval"), ("max_pause_s", "max pause"), ("cpu_s", "CPU"))


def timings_from_log(path: Path) -> dict:
    """compile, data wait and longest pause of a run, from the loop's fields in its metrics.jsonl."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines or "compile_s" not in lines[0]:
        raise ValueError(f"{path} has no timing fields (compile_s, data_wait_s, max_pause_s) on its first line; "
                         f"expected the log of one fresh training run")
    return {"compile_s": lines[0]["compile_s"], "data_wait_s": sum(line["data_wait_s"] for line in lines),
            "max_pause_s": max(line["max_pause_s"] for line in lines), "steps": lines[-1]["step"]}


def one_run(argv) -> None:
    """Child process: what train.py does, timed; writes ``<workdir>/quickstart.json``."""
    from absl import app, logging

    from ssm_jax.training import cli
    from ssm_jax.training.run import Experiment

    config_flag, workdir_flag = cli.define_run_flags("Fresh directory for this run's outputs.")

    def main(args):
        if len(args) > 1:
            raise app.UsageError(f"unexpected arguments: {args[1:]}")
        logging.set_verbosity(logging.WARNING)
        workdir = Path(workdir_flag.value)
        experiment = Experiment(config_flag.value, workdir)
        built = time.perf_counter()
        experiment.train()
        trained = time.perf_counter()
        summary = experiment.evaluate()
        evaluated = time.perf_counter()
        result = {"startup_s": built - _START, "train_s": trained - built, "eval_s": evaluated - trained,
                  "cpu_s": time.process_time(), "acc": summary["acc"], "f1": summary["f1"],
                  **timings_from_log(workdir / "metrics.jsonl")}
        result["compute_s"] = result["train_s"] - result["compile_s"] - result["data_wait_s"]
        (workdir / RESULT).write_text(json.dumps(result, indent=2) + "\n")

    app.run(main, argv=argv, flags_parser=cli.parse_flags)


def step_time(argv) -> None:
    """Child process: median wall and CPU seconds of the config's jitted train step on one fixed batch."""
    from absl import app, logging

    import jax

    from ssm_jax.training import cli
    from ssm_jax.training.mesh import shard_batch
    from ssm_jax.training.run import Experiment

    steps = int(argv.pop(1))
    config_flag, workdir_flag = cli.define_run_flags("Scratch directory.")

    def main(args):
        logging.set_verbosity(logging.WARNING)
        config = config_flag.value
        experiment = Experiment(config, workdir_flag.value)
        batch = shard_batch(next(iter(experiment.pipeline(experiment.train_source, train=True))), experiment.mesh)
        train_step = experiment.family.module.make_train_step(config.loss, experiment.mesh,
                                                              config.train.grad_accum_steps)
        state, metrics = train_step(experiment.state, batch)  # compile
        jax.block_until_ready(metrics)
        walls, cpus = [], []
        for _ in range(steps):
            wall, cpu = time.perf_counter(), time.process_time()
            state, metrics = train_step(state, batch)
            jax.block_until_ready(metrics)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        print(f"train step, batch {config.train.batch_size} at {config.data.image_size} px: median of {steps} "
              f"after the compile {statistics.median(walls):.3f} s wall, {statistics.median(cpus):.3f} s CPU "
              f"(CPU / wall {sum(cpus) / sum(walls):.2f}; load average {os.getloadavg()[0]:.1f})", flush=True)

    app.run(main, argv=argv, flags_parser=cli.parse_flags)


def run_seed(seed: int, workdir: Path, config: str, overrides: list[str]) -> dict:
    """One fresh process for ``seed``; its result with the process's total wall time and the load around it."""
    if workdir.exists():
        raise FileExistsError(f"{workdir} exists; a timed run needs a fresh workdir (choose another --workdir)")
    command = [sys.executable, "-m", "benchmarks.quickstart", CHILD, f"--config={config}", f"--workdir={workdir}",
               *overrides, f"--config.seed={seed}"]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    total = time.perf_counter() - start
    result = json.loads((workdir / RESULT).read_text())
    return {**result, "seed": seed, "total_s": total, "load": (load_before, os.getloadavg()[0])}


def _mean_sd(values: list[float]) -> str:
    """Mean ± sample standard deviation; the mean alone for one value, which has no spread to state."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def print_table(rows: list[dict]) -> None:
    header = ["seed"] + [name for _, name in COLUMNS] + ["ACC %", "macro F1 %", "load before/after"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for r in rows:
        cells = [str(r["seed"])] + [f"{r[key]:.1f} s" for key, _ in COLUMNS]
        cells += [f"{100 * r['acc']:.2f}", f"{100 * r['f1']:.2f}", f"{r['load'][0]:.1f} / {r['load'][1]:.1f}"]
        print("| " + " | ".join(cells) + " |")
    cells = ["mean ± sd" if len(rows) > 1 else "mean"] + [_mean_sd([r[key] for r in rows]) + " s" for key, _ in COLUMNS]
    cells += [_mean_sd([100 * r["acc"] for r in rows]), _mean_sd([100 * r["f1"] for r in rows]), ""]
    print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/memorymamba_elpv.py:cpu")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one fresh run each")
    parser.add_argument("--workdir", default=None, help="parent of the runs' workdirs (default: a new temp dir)")
    parser.add_argument("--step-time", type=int, default=0, metavar="N",
                        help="time N train steps of the config instead of whole runs")
    args, overrides = parser.parse_known_args()
    unknown = [a for a in overrides if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognised arguments {unknown}; only --config.<field>=<value> overrides are passed on")
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="quickstart_"))
    if args.step_time > 0:
        subprocess.run([sys.executable, "-m", "benchmarks.quickstart", STEP_CHILD, str(args.step_time),
                        f"--config={args.config}", f"--workdir={root / 'step_time'}", *overrides], cwd=ROOT, check=True)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"# {args.config} {' '.join(overrides)}; seeds {seeds}; {os.cpu_count()} CPUs; runs under {root}",
          flush=True)
    rows = [run_seed(seed, root / f"seed{seed}", args.config, overrides) for seed in seeds]
    print_table(rows)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        one_run([sys.argv[0]] + sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == STEP_CHILD:
        step_time([sys.argv[0]] + sys.argv[2:])
    else:
        main()
