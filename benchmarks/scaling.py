"""Data-parallel scaling of the training step on 1, 2, 4, ... devices of one host: step time, images/s, efficiency.

    python benchmarks/scaling.py                                          # MemoryMamba tiny, 224 px, 64 per device
    python benchmarks/scaling.py --config=configs/mambaad_elpv.py --per_device_batch=16 --pipeline
    python benchmarks/scaling.py --devices=1,2,4 --per_device_batch=96 --json=scaling.jsonl

For each device count N (``--devices``, capped at the devices present) a mesh over the first N devices runs the
config's jitted train step, the one train.py runs (``--config.train.grad_accum_steps`` included), on a global
batch of N x ``--per_device_batch`` (default: the config's ``train.batch_size``; pick what fills one device):
step time is the mean over ``--steps`` steps after ``--warmup``, on one batch already on the devices, dispatched
back to back as the training loop does. Scaling efficiency = images/s(N) / (N / N0 x images/s(N0)), N0 the
smallest count measured (1 by default), so 1.0 is linear scaling. With ``--pipeline`` the steps are timed a second
time fed by the config's input pipeline the way the training loop feeds them (next batch, put on the devices,
step), and the pipeline's share of the step is 1 - step time / pipeline-fed step time. Prints a table; appends
one JSON object per device count to ``--json``.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.train_throughput import peak_memory  # noqa: E402
from ssm_jax.data import make_pipeline  # noqa: E402
from ssm_jax.training import cli  # noqa: E402
from ssm_jax.training.accumulate import check_grad_accum  # noqa: E402
from ssm_jax.training.mesh import make_mesh, shard_batch  # noqa: E402
from ssm_jax.training.optim import make_optimizer  # noqa: E402
from ssm_jax.training.run import TASKS, build_model, load_source  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "memorymamba_elpv.py"),
                                          "Config file (as for train.py): model, loss, optimiser, data.",
                                          lock_config=True)
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4"], "Device counts to measure; counts above the number of "
                             "devices present are skipped.")
_PER_DEVICE_BATCH = flags.DEFINE_integer("per_device_batch", None, "Images per device per step (default: the "
                                         "config's train.batch_size).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per device count.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (after compilation).")
_PIPELINE = flags.DEFINE_boolean("pipeline", False, "Also time steps fed by the config's input pipeline.")
_JSON = flags.DEFINE_string("json", None, "Append one JSON object per device count to this file, as each is measured.")


def device_counts(requested: list[str], available: int) -> list[int]:
    """The requested counts that fit on ``available`` devices, ascending; a bad entry is an error."""
    try:
        counts = sorted({int(c) for c in requested})
    except ValueError:
        raise ValueError(f"--devices={','.join(requested)}: expected comma-separated integers, e.g. 1,2,4") from None
    if not counts or counts[0] < 1:
        raise ValueError(f"--devices={','.join(requested)}: expected positive integers")
    fitting = [c for c in counts if c <= available]
    if not fitting:
        raise ValueError(f"--devices={','.join(requested)}: this host has only {available} device(s)")
    return fitting


def add_efficiency(rows: list[dict]) -> list[dict]:
    """``efficiency`` = images/s(N) / (N / N0 x images/s(N0)) for every row, N0 the smallest device count."""
    base = min(rows, key=lambda r: r["devices"])
    for r in rows:
        r["efficiency"] = r["images_per_s"] / (r["devices"] / base["devices"] * base["images_per_s"])
    return rows


def random_batch(config, size: int) -> dict:
    """Standard-normal images, valid labels and example indices (SNARM's step reads them): a batch as the train step
    reads it."""
    rng = np.random.default_rng(config.seed)
    image = rng.standard_normal((size, config.data.image_size, config.data.image_size, 3), dtype=np.float32)
    return {"image": image, "label": rng.integers(0, config.model.get("num_classes", 1), size).astype(np.int32),
            "index": np.arange(size, dtype=np.int64)}


def mean_step_seconds(step, state, next_batch, steps: int, warmup: int):
    """(state, mean seconds per step) over ``steps`` steps dispatched back to back, after ``warmup`` steps."""
    for _ in range(warmup):
        state, _ = step(state, next_batch())
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, next_batch())
    jax.block_until_ready((state, metrics))
    return state, (time.perf_counter() - start) / steps


def measure(config, model, count: int, per_device_batch: int, source=None, train_source=None) -> dict:
    """One table row: the train step on the first ``count`` devices; with ``source``, also fed by its pipeline.
    ``train_source``: the training split, for a state built from it (SNARM's bank); else None."""
    family, accum = TASKS[config.task], config.train.grad_accum_steps
    mesh = make_mesh(jax.devices()[:count])
    global_batch = count * per_device_batch
    state = family.module.create_state(model, make_optimizer(config.optim, 1000, frozen=family.frozen),
                                       jax.random.PRNGKey(config.seed), config.data.image_size, mesh,
                                       **family.state_kwargs(config, train_source, False))
    batches = None
    if source is not None:
        batches = iter(make_pipeline(source, batch_size=global_batch, image_size=config.data.image_size, train=True,
                                     seed=config.seed, flips=tuple(config.data.flips),
                                     num_workers=config.data.num_workers, skip_corrupt=config.data.skip_corrupt))
    fixed = shard_batch(next(batches) if batches else random_batch(config, global_batch), mesh)
    start = time.perf_counter()
    step = family.module.make_train_step(config.loss, mesh, accum).lower(state, fixed).compile()
    compile_s = time.perf_counter() - start
    state, seconds = mean_step_seconds(step, state, lambda: fixed, _STEPS.value, _WARMUP.value)
    row = {"model": config.model.name, "device": jax.devices()[0].device_kind, "devices": count,
           "image_size": config.data.image_size, "per_device_batch": per_device_batch, "global_batch": global_batch,
           "grad_accum_steps": accum, "step_ms": seconds * 1e3, "images_per_s": global_batch / seconds,
           "memory": peak_memory(step), "compile_s": compile_s}
    if batches is not None:
        _, fed = mean_step_seconds(step, state, lambda: shard_batch(next(batches), mesh), _STEPS.value, _WARMUP.value)
        batches.close()  # its data workers would otherwise run on beside the next device count's
        row.update(pipeline_step_ms=fed * 1e3, pipeline_share=max(0.0, 1.0 - seconds / fed))
    return row


def format_row(r: dict) -> str:
    line = (f"{r['devices']:>7}{r['global_batch']:>8}{r['step_ms']:>11.1f}{r['images_per_s']:>11.1f}"
            f"{r['efficiency']:>8.3f}")
    if "pipeline_step_ms" in r:
        line += f"{r['pipeline_step_ms']:>14.1f}{100 * r['pipeline_share']:>9.1f}%"
    return line + f"  {r['memory']}  compiled in {r['compile_s']:.0f} s"


def run(config, counts: list[int], per_device_batch: int, pipeline: bool) -> list[dict]:
    """Measure every count, print the table, return the rows (efficiency included)."""
    for count in counts:
        check_grad_accum(count * per_device_batch, config.train.grad_accum_steps, make_mesh(jax.devices()[:count]),
                         what=f"the global batch (--per_device_batch={per_device_batch} x {count} devices)")
    model = build_model(config)
    source = load_source(config, "train") if pipeline else None
    train_source = source if source is not None or config.task != "residual" else load_source(config, "train")
    print(f"# {config.model.name}, {config.data.image_size} px, {per_device_batch} images per device"
          f"{f' in {config.train.grad_accum_steps} micro-batches' if config.train.grad_accum_steps > 1 else ''}; "
          f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform}); mean of {_STEPS.value} steps; "
          f"efficiency = images/s(N) / (N/{counts[0]} x images/s({counts[0]}))", flush=True)
    print(f"{'devices':>7}{'batch':>8}{'step (ms)':>11}{'images/s':>11}{'eff.':>8}"
          + (f"{'fed step (ms)':>14}{'input':>10}" if pipeline else "") + "  memory", flush=True)
    rows = []
    for count in counts:
        rows.append(measure(config, model, count, per_device_batch, source, train_source))
        add_efficiency(rows)
        print(format_row(rows[-1]), flush=True)
        if _JSON.value:  # row by row, so a run cut short (a device call's time limit) keeps what it measured
            with open(_JSON.value, "a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if jax.process_count() > 1:
        sys.exit("error: scaling.py measures the devices of one host; run it as a single process")
    config = _CONFIG.value
    try:
        counts = device_counts(_DEVICES.value, jax.device_count())
        skipped = sorted({int(c) for c in _DEVICES.value} - set(counts))
        if skipped:
            print(f"# skipped {skipped}: this host has {jax.device_count()} device(s)")
        run(config, counts, _PER_DEVICE_BATCH.value or config.train.batch_size, _PIPELINE.value)
    except cli.USER_ERRORS as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
