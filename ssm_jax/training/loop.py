"""The training loop shared by every task: jitted step, progress bar, metrics log, checkpoints, NaN guard.

A task supplies ``train_step(state, batch) -> (state, metrics)`` and a batch iterator with
``get_state()``/``set_state()``; the loop owns resuming, logging and saving, so every task resumes the same way.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator

import jax
from tqdm.auto import tqdm

from ssm_jax.training.checkpoint import Checkpointer
from ssm_jax.training.log import MetricsLog
from ssm_jax.training.mesh import shard_batch


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class PendingMetrics:
    """Per-step metrics kept on device until a flush, so the loop does not wait on every step."""

    def __init__(self):
        self._steps: list[tuple[int, dict]] = []

    def add(self, step: int, metrics: dict) -> None:
        self._steps.append((step, metrics))

    def flush(self, last_good_step: int | None, checkpoint_dir) -> dict:
        """Fetch, check that every loss is finite, and return the mean of each metric over the pending steps."""
        fetched = jax.device_get(self._steps)
        self._steps = []
        for step, metrics in fetched:
            if not math.isfinite(float(metrics["loss"])):
                where = (f"the last good checkpoint is step {last_good_step} in {checkpoint_dir}"
                         if last_good_step is not None else "no checkpoint was written yet")
                raise NonFiniteLossError(
                    f"loss is {float(metrics['loss'])} at step {step + 1}; training stopped and {where}. "
                    f"Try a lower --config.optim.lr, gradient clipping (--config.optim.grad_clip=1.0) or float32 "
                    f"activations (--config.model.dtype=float32).")
        if not fetched:
            return {}
        return {k: sum(float(m[k]) for _, m in fetched) / len(fetched) for k in fetched[0][1]}


def train_loop(state, train_step: Callable, batches: Iterator, *, mesh, total_steps: int, checkpointer: Checkpointer,
               log: MetricsLog, log_every: int, checkpoint_every: int, images_per_step: int,
               on_log: Callable[[int, dict], None] | None = None):
    """Run ``train_step`` from ``state.step`` to ``total_steps``; returns the final state.

    Checkpoints every ``checkpoint_every`` steps and at the end, each after checking all losses since the last
    one are finite, so a saved state is never a diverged one.
    """
    start = int(jax.device_get(state.step))
    pending = PendingMetrics()
    last_saved = checkpointer.latest_step()
    bar = tqdm(total=total_steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    tick, tick_step = time.perf_counter(), start
    for step in range(start, total_steps):
        state, metrics = train_step(state, shard_batch(next(batches), mesh))
        pending.add(step, metrics)
        done = step + 1
        bar.update(1)
        if done % log_every == 0 or done == total_steps or done % checkpoint_every == 0:
            means = pending.flush(last_saved, checkpointer.directory)
            now = time.perf_counter()
            means["images_per_s"] = (done - tick_step) * images_per_step / max(now - tick, 1e-9)
            tick, tick_step = now, done
            log.write(done, means)
            bar.set_postfix({k: f"{v:.4g}" for k, v in means.items() if k in ("loss", "acc", "images_per_s")})
            if on_log is not None:
                on_log(done, means)
        if done % checkpoint_every == 0 or done == total_steps:
            checkpointer.save(done, state, {"data": batches.get_state()})
            last_saved = done
    bar.close()
    return state
