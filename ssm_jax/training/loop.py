"""The training loop shared by every task: jitted step, progress bar, metrics log, checkpoints, NaN guard.

A task supplies ``train_step(state, batch) -> (state, metrics)`` and a batch iterator with
``get_state()``/``set_state()``; the loop owns resuming, logging and saving, so every task resumes the same way.

One step stays queued: step n is dispatched, then the loop waits for step n - 1 to finish and fetches the batch of
step n + 1 while step n computes. Checkpoints are written in the background while the next steps run; the last
one, and one still being written when the loop stops (an error, a second Ctrl-C), is waited for. Asked to stop
(SIGTERM: a cluster's preemption or time limit, ``timeout``; or Ctrl-C), the loop checkpoints the step it is on and
raises ``Preempted`` (``ssm_jax.training.preemption``), so the same command resumes there. Each logged line also says
how many steps its means are over (``steps_averaged``: ``log_every``, fewer at a checkpoint between two log steps and
at the end) and where the time went since the last one (``LoopClock``): ``data_wait_s`` (seconds blocked on the
input pipeline), ``max_pause_s`` (the longest time between two finished steps, checkpoints included),
``images_per_s`` (without the first step) and, on the first line of a run, ``compile_s`` (the first step: tracing,
compiling, running it).

Issue 13: the ``:cpu`` ELPV quick start took ~19 minutes on 2 cores, in bursts of ~10 fast steps and a ~13 s pause
at each metrics flush. Profiled on this project's 2-core machine on 2026-11-23 (step times taken while it was
quiet; it is shared, and other jobs' load doubled them at times):
* The pause was no stall: steps are dispatched asynchronously, the loop queued a whole ``log_every`` interval of
  them in under a second, and ``device_get`` at the flush waited for all ten (1.1-1.3 s each). With one step
  queued the bar, images/s and pauses are real, and nothing is lost: the next batch is still fetched during a step.
* The step was nearly all of the time: 1.04 s per batch of 32 (1.79 s of CPU over the two cores), mostly the
  sequential selective scan's backward (8x its forward). The ``:cpu`` variant now has d_state 1 and expand 1:
  0.28 s (0.40 s of CPU) at the same accuracy (``configs/memorymamba_elpv.py``; ``python -m benchmarks.quickstart
  --step-time 10``, with ``--config.model.d_state=16 --config.model.expand=2`` for the old one).
* Each checkpoint (every 100 steps) blocked the loop 1.5-2 s while orbax wrote it, so the pauses around them
  reached 2.1-3.7 s (``max_pause_s``, machine loaded). Written in the background, no pause between two steps
  exceeded 1.5 s in three whole runs (``python -m benchmarks.quickstart``).
* Input: decoding and resizing the 300 px PNGs cost ~0.1 s of CPU per batch, every epoch; now done once and
  cached, and batches are made ahead in a thread, so the loop waited 4-5 s for data in a whole run instead of
  17-19 s (``ssm_jax.data.pipeline``).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator

import jax
from tqdm.auto import tqdm

from ssm_jax.training.checkpoint import Checkpointer, StateSummary, summarise
from ssm_jax.training.log import MetricsLog
from ssm_jax.training.mesh import shard_batch
from ssm_jax.training.preemption import Preempted, StopRequest


class NonFiniteLossError(FloatingPointError):
    """The loss, or the trained state, became NaN or infinite; the last good checkpoint is kept."""


def _where_to_resume(last_good_step: int | None, checkpoint_dir) -> str:
    return (f"the last good checkpoint is step {last_good_step} in {checkpoint_dir}" if last_good_step is not None
            else "no checkpoint was written yet")


_ADVICE = ("Try a lower --config.optim.lr, gradient clipping (--config.optim.grad_clip=1.0) or float32 activations "
           "(--config.model.dtype=float32).")


def check_state_is_finite(state, step: int, last_good_step: int | None, checkpoint_dir) -> StateSummary:
    """Raise ``NonFiniteLossError`` if a floating-point leaf of ``state`` (parameters, optimiser moments, batch
    statistics) holds NaN or inf after ``step`` steps, naming the first. A step's loss is computed before its update,
    so a finite loss does not clear the state that a NaN gradient or an overflowing update left: this check runs before
    each checkpoint, so that a saved state is never a diverged one. Returns the state's summary, whose checksums the
    checkpoint then saves: one pass over the state for both."""
    summary = summarise(state)
    if summary.non_finite:
        more = len(summary.non_finite) - 1
        raise NonFiniteLossError(
            f"the trained state holds NaN or infinite values after step {step}, although the loss was finite (a "
            f"gradient or an update was not): {summary.non_finite[0]}{f' and {more} more arrays' if more else ''}; "
            f"training stopped and {_where_to_resume(last_good_step, checkpoint_dir)}. {_ADVICE}")
    return summary


def checked_save(checkpointer: Checkpointer, step: int, state, extra: dict, *, wait: bool,
                 last_good_step: int | None) -> None:
    """A checkpoint of ``state`` at ``step`` once ``check_state_is_finite`` passes, with the checksums it computed."""
    summary = check_state_is_finite(state, step, last_good_step, checkpointer.directory)
    checkpointer.save(step, state, extra, wait=wait, summary=summary)


class PendingMetrics:
    """Per-step metrics kept until a flush, then fetched, checked and averaged together."""

    def __init__(self):
        self._steps: list[tuple[int, dict]] = []

    def add(self, step: int, metrics: dict) -> None:
        self._steps.append((step, metrics))

    def flush(self, last_good_step: int | None, checkpoint_dir) -> dict:
        """Fetch, check that every loss is finite, and return the mean of each metric over the pending steps, with
        their number (``steps_averaged``)."""
        fetched = jax.device_get(self._steps)
        self._steps = []
        for step, metrics in fetched:
            if not math.isfinite(float(metrics["loss"])):
                raise NonFiniteLossError(
                    f"loss is {float(metrics['loss'])} at step {step + 1}; training stopped and "
                    f"{_where_to_resume(last_good_step, checkpoint_dir)}. {_ADVICE}")
        if not fetched:
            return {}
        means = {k: sum(float(m[k]) for _, m in fetched) / len(fetched) for k in fetched[0][1]}
        return {**means, "steps_averaged": len(fetched)}


class LoopClock:
    """Where the loop's wall time goes: the first step (compile), waits for batches, the longest pause between two
    finished steps, and images/s over the other steps. ``interval()`` returns the figures since its last call, as
    ``metrics.jsonl`` fields, and starts a new interval."""

    def __init__(self, images_per_step: int, now: Callable[[], float] = time.perf_counter):
        self.images_per_step, self.now = images_per_step, now
        self._compile_s: float | None = None
        self._data_wait_s = self._max_pause_s = 0.0
        self._last_finished: float | None = None
        self._since, self._steps = now(), 0

    def waited_for_data(self, seconds: float) -> None:
        self._data_wait_s += seconds

    def step_finished(self) -> None:
        now = self.now()
        if self._last_finished is not None:
            self._max_pause_s = max(self._max_pause_s, now - self._last_finished)
        self._last_finished = now
        self._steps += 1

    def compiled(self, seconds: float) -> None:
        """The first step took ``seconds`` from dispatch to result; images/s counts from here on."""
        self._compile_s = seconds
        self._since, self._steps = self.now(), 0

    def interval(self) -> dict:
        now = self.now()
        out = {"data_wait_s": self._data_wait_s, "max_pause_s": self._max_pause_s}
        if self._compile_s is not None:
            out["compile_s"] = self._compile_s
        if self._steps:
            out["images_per_s"] = self._steps * self.images_per_step / max(now - self._since, 1e-9)
        self._compile_s, self._data_wait_s, self._max_pause_s = None, 0.0, 0.0
        self._since, self._steps = now, 0
        return out


def train_loop(state, train_step: Callable, batches: Iterator, *, mesh, total_steps: int, checkpointer: Checkpointer,
               log: MetricsLog, log_every: int, checkpoint_every: int, images_per_step: int,
               on_log: Callable[[int, dict], None] | None = None, now: Callable[[], float] = time.perf_counter):
    """Run ``train_step`` from ``state.step`` to ``total_steps``; returns the final state.

    Checkpoints every ``checkpoint_every`` steps and at the end, each after checking that all losses since the last
    one and the state itself are finite, so a saved state is never a diverged one; ``now`` is the clock of the
    logged timings.
    """
    start = int(jax.device_get(state.step))
    clock = LoopClock(images_per_step, now)
    pending = PendingMetrics()
    last_saved = checkpointer.latest_step()
    bar = tqdm(total=total_steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    running = None  # metrics of the dispatched step not yet known to be finished

    def finish(metrics) -> None:
        jax.block_until_ready(metrics)
        clock.step_finished()
        bar.update(1)

    try:
        with StopRequest() as stop:
            for step in range(start, total_steps):
                before = now()
                try:
                    host_batch = next(batches)
                except RuntimeError:  # a stop sent to the process group killed a data worker still starting
                    if stop.signum is None or step != start:
                        raise
                    raise Preempted(step, checkpointer.directory, stop.signum) from None
                batch = shard_batch(host_batch, mesh)
                dispatched = now()
                clock.waited_for_data(dispatched - before)
                state, metrics = train_step(state, batch)
                pending.add(step, metrics)
                if step == start:  # compiles: timed alone
                    finish(metrics)
                    clock.compiled(now() - dispatched)
                else:
                    if running is not None:
                        finish(running)
                    running = metrics
                done = step + 1
                stopping = stop.requested(done) and done < total_steps
                save = done % checkpoint_every == 0 or done == total_steps or stopping
                if done % log_every == 0 or save:
                    if running is not None:
                        finish(running)
                        running = None
                    means = {**pending.flush(last_saved, checkpointer.directory), **clock.interval()}
                    log.write(done, means)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in means.items() if k in ("loss", "acc", "images_per_s")})
                    if on_log is not None:
                        on_log(done, means)
                if save:
                    # Written in the background while the next steps run; the last one is waited for.
                    checked_save(checkpointer, done, state, {"data": batches.get_state()},
                                 wait=done == total_steps or stopping, last_good_step=last_saved)
                    last_saved = done
                if stopping:
                    raise Preempted(done, checkpointer.directory, stop.signum)
    finally:  # also on an error or a second Ctrl-C: the bar ends its line before the error is printed, and the
        bar.close()  # checkpoint being written completes, so a rerun resumes from it
        checkpointer.wait_until_finished()
    return state
