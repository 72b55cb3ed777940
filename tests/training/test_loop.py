"""The training loop's schedule (one step queued, flushes wait for every step) and its time accounting."""

import json
import os
import signal
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.training import run
from ssm_jax.training.checkpoint import Checkpointer
from ssm_jax.training.log import MetricsLog
from ssm_jax.training.loop import LoopClock, NonFiniteLossError, train_loop
from ssm_jax.training.preemption import Preempted
from tests.training.conftest import flat_params
from ssm_jax.training.mesh import make_mesh

BATCH = 4


class Scripted:
    """A fake world for the loop: every event is recorded in ``events``; a virtual clock advances by ``fetch_s``
    per batch fetched and, when a step is waited for, by ``compile_s`` (first step) or ``step_s`` (the others)."""

    def __init__(self, fetch_s=0.25, compile_s=5.0, step_s=1.0):
        self.events, self.summaries, self.t = [], [], 0.0
        self.fetch_s, self.compile_s, self.step_s = fetch_s, compile_s, step_s
        self.fetched = 0

    def now(self):
        return self.t

    # the batch iterator
    def __next__(self):
        self.events.append(f"fetch {self.fetched}")
        self.fetched += 1
        self.t += self.fetch_s
        return {"image": np.zeros((BATCH, 2), np.float32)}

    def get_state(self):
        return {"fetched": self.fetched}

    # the step: its metrics are "futures" that cost time when waited for
    def train_step(self, state, batch):
        step = state.step
        self.events.append(f"dispatch {step}")
        return State(step + 1), {"loss": Future(self, step)}

    # the checkpointer
    directory = "ckpt"

    def latest_step(self):
        return None

    def save(self, step, state, extra, wait=True, summary=None):
        self.events.append(f"save {step} {extra['data']['fetched']}{' and wait' if wait else ''}")
        self.summaries.append(summary)

    def wait_until_finished(self):
        self.events.append("saved")


class Future:
    def __init__(self, world, step):
        self.world, self.step, self.done = world, step, False

    def block_until_ready(self):
        if not self.done:
            self.world.events.append(f"wait {self.step}")
            self.world.t += self.world.compile_s if self.step == 0 else self.world.step_s
            self.done = True
        return self

    def __float__(self):
        assert self.done, f"step {self.step} read before it was waited for"
        return 0.5


class State:
    def __init__(self, step):
        self.step = step


def _run(world, tmp_path, total_steps=7, log_every=3, checkpoint_every=100):
    logged = []
    train_loop(State(0), world.train_step, world, mesh=make_mesh(), total_steps=total_steps, checkpointer=world,
               log=MetricsLog(tmp_path), log_every=log_every, checkpoint_every=checkpoint_every,
               images_per_step=BATCH, on_log=lambda step, means: world.events.append(f"log {step}") or logged.append(
                   means), now=world.now)
    return logged


def test_one_step_stays_queued_and_flushes_wait_for_every_step(tmp_path):
    world = Scripted()
    _run(world, tmp_path)
    assert world.events == [
        "fetch 0", "dispatch 0", "wait 0",  # the first step (compile) alone
        "fetch 1", "dispatch 1",
        "fetch 2", "dispatch 2", "wait 1", "wait 2", "log 3",  # step 2 queued behind 1; the flush waits for both
        "fetch 3", "dispatch 3",
        "fetch 4", "dispatch 4", "wait 3",  # the batch of step 4 was fetched while step 3 ran
        "fetch 5", "dispatch 5", "wait 4", "wait 5", "log 6",
        "fetch 6", "dispatch 6", "wait 6", "log 7", "save 7 7 and wait",  # the data position saved is step 7's
        "saved",
    ]


def test_checkpoints_are_written_while_the_next_steps_run(tmp_path):
    world = Scripted()
    _run(world, tmp_path, total_steps=5, log_every=10, checkpoint_every=2)
    assert world.events == [
        "fetch 0", "dispatch 0", "wait 0",
        "fetch 1", "dispatch 1", "wait 1", "log 2", "save 2 2",  # a checkpoint is checked (log) then saved
        "fetch 2", "dispatch 2",
        "fetch 3", "dispatch 3", "wait 2", "wait 3", "log 4", "save 4 4",
        "fetch 4", "dispatch 4", "wait 4", "log 5", "save 5 5 and wait", "saved",
    ]


def test_an_interrupted_run_waits_for_its_checkpoint(tmp_path):
    world = Scripted()

    def crash_at_step_3(state, batch):
        if state.step == 3:
            raise KeyboardInterrupt("simulated crash")
        return Scripted.train_step(world, state, batch)

    world.train_step = crash_at_step_3
    with pytest.raises(KeyboardInterrupt):
        _run(world, tmp_path, total_steps=6, log_every=10, checkpoint_every=2)
    assert world.events[-5:] == ["save 2 2", "fetch 2", "dispatch 2", "fetch 3", "saved"]


def test_a_failing_batch_ends_the_progress_bar_before_its_error_is_printed(tmp_path, monkeypatch):
    """A corrupt image raises from the batch iterator mid-run: the bar is closed (its line ended) on the way out,
    so the error that follows is on a line of its own, and the checkpoint being written still completes."""
    world = Scripted()

    class Bar:
        def __init__(self, **kwargs):
            pass

        def update(self, n):
            pass

        def set_postfix(self, values):
            pass

        def close(self):
            world.events.append("bar closed")

    monkeypatch.setattr("ssm_jax.training.loop.tqdm", Bar)
    fetch = Scripted.__next__

    def corrupt_at_batch_3(self):
        if self.fetched == 3:
            raise ValueError("corrupt image")
        return fetch(self)

    monkeypatch.setattr(Scripted, "__next__", corrupt_at_batch_3)
    with pytest.raises(ValueError, match="corrupt image"):
        _run(world, tmp_path, total_steps=6, log_every=10, checkpoint_every=2)
    assert world.events[-5:] == ["save 2 2", "fetch 2", "dispatch 2", "bar closed", "saved"]


def _signal_at_step_3(world, *signums):
    def step(state, batch):
        if state.step == 3:
            for signum in signums:
                os.kill(os.getpid(), signum)
        return Scripted.train_step(world, state, batch)
    return step


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_checkpoints_the_current_step_and_stops(tmp_path, capsys, signum):
    world = Scripted()
    world.train_step = _signal_at_step_3(world, signum)  # handled: the step still runs
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with pytest.raises(Preempted, match=f"{signum.name}.* after step 4; its checkpoint is in ckpt") as stopped:
        _run(world, tmp_path, total_steps=10, log_every=10, checkpoint_every=100)
    assert stopped.value.step == 4 and stopped.value.exit_code == 128 + signum
    assert world.events[world.events.index("dispatch 3"):] == ["dispatch 3", "wait 2", "wait 3", "log 4",
                                                                "save 4 4 and wait", "saved"]
    assert {s: signal.getsignal(s) for s in previous} == previous  # the previous handlers are back
    assert ("press Ctrl-C again to stop at once" in capsys.readouterr().err) == (signum == signal.SIGINT)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, None])
def test_a_stop_that_kills_a_starting_data_worker_stops_the_run_as_asked(tmp_path, monkeypatch, signum):
    """The stop reaches the process group while the first batch's workers start: the one that could not ignore it yet
    died, and grain says so; that is the stop, not a crash. Without a stop the same error is raised as it is."""
    def worker_killed(self):
        if signum is not None:
            os.kill(os.getpid(), signum)
        raise RuntimeError("Worker process was terminated unexpectedly with exit code -15.")

    monkeypatch.setattr(Scripted, "__next__", worker_killed)
    if signum is None:
        with pytest.raises(RuntimeError, match="terminated unexpectedly"):
            _run(Scripted(), tmp_path)
        return
    with pytest.raises(Preempted, match=f"{signum.name}.* before the first step: run the same command") as stopped:
        _run(Scripted(), tmp_path)
    assert stopped.value.exit_code == 128 + signum


def test_a_second_ctrl_c_interrupts_at_once_keeping_the_last_checkpoint(tmp_path):
    world = Scripted()
    world.train_step = _signal_at_step_3(world, signal.SIGINT, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        _run(world, tmp_path, total_steps=10, log_every=10, checkpoint_every=2)
    assert "save 4 4 and wait" not in world.events and world.events[-1] == "saved"  # step 2's save completed


def test_ctrl_c_is_left_alone_where_it_is_ignored(tmp_path):
    """A background job ignores SIGINT; the loop does not start to watch it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        world = Scripted()
        world.train_step = _signal_at_step_3(world, signal.SIGINT)
        _run(world, tmp_path, total_steps=6, log_every=10, checkpoint_every=100)  # runs to the end, no Preempted
        assert world.events[-2:] == ["save 6 6 and wait", "saved"]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_background_save_keeps_the_state_it_was_given(tmp_path):
    checkpointer = Checkpointer(tmp_path, {"model": "m", "params": "p", "num_params": 0})
    state = {"w": jnp.arange(100_000, dtype=jnp.float32), "b": jnp.ones((64, 64))}
    expected = jax.tree.map(np.array, state)
    checkpointer.save(1, state, {"data": {}}, wait=False)
    overwritten = jax.jit(lambda s: jax.tree.map(lambda x: -x, s), donate_argnums=0)(state)
    jax.block_until_ready(overwritten)
    checkpointer.wait_until_finished()
    restored, extra = checkpointer.restore(jax.tree.map(jnp.zeros_like, overwritten))
    assert extra["step"] == 1
    for key in expected:
        np.testing.assert_array_equal(np.asarray(restored[key]), expected[key])


def test_logged_timings_split_compile_data_wait_and_pauses(tmp_path):
    world = Scripted(fetch_s=0.25, compile_s=5.0, step_s=1.0)
    first, second, last = _run(world, tmp_path)
    # steps 1-3: fetch 0 -> 0.25, compile to 5.25; fetch 1, 2 -> 5.75; waits -> finished at 6.75 and 7.75
    assert first["compile_s"] == pytest.approx(5.0)
    assert first["data_wait_s"] == pytest.approx(0.75)
    assert first["max_pause_s"] == pytest.approx(1.5)  # 5.25 -> 6.75
    assert first["images_per_s"] == pytest.approx(2 * BATCH / (7.75 - 5.25))  # without the compiling step
    # steps 4-6: finished at 9.25 (after fetches 3, 4), 10.5 and 11.5
    assert "compile_s" not in second
    assert second["data_wait_s"] == pytest.approx(0.75)
    assert second["max_pause_s"] == pytest.approx(1.5)  # 7.75 -> 9.25
    assert second["images_per_s"] == pytest.approx(3 * BATCH / (11.5 - 7.75))
    assert last["max_pause_s"] == pytest.approx(1.25) and last["data_wait_s"] == pytest.approx(0.25)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [3, 6, 7] and lines[0]["compile_s"] == pytest.approx(5.0)
    assert [line["steps_averaged"] for line in lines] == [3, 3, 1]  # the last line's means are over step 7 alone


def test_loop_clock_intervals_reset():
    t = [0.0]
    clock = LoopClock(images_per_step=8, now=lambda: t[0])
    t[0] = 3.0
    clock.step_finished()
    clock.compiled(3.0)
    for now, data in ((4.0, 0.1), (5.0, 0.2), (8.0, 0.0), (8.5, 0.3)):
        t[0] = now
        clock.waited_for_data(data)
        clock.step_finished()
    assert clock.interval() == pytest.approx({"compile_s": 3.0, "data_wait_s": 0.6, "max_pause_s": 3.0,
                                              "images_per_s": 4 * 8 / 5.5})
    t[0] = 10.0
    clock.step_finished()
    assert clock.interval() == pytest.approx({"data_wait_s": 0.0, "max_pause_s": 1.5, "images_per_s": 8 / 1.5})
    assert clock.interval() == {"data_wait_s": 0.0, "max_pause_s": 0.0}  # no step finished: no rate


def test_a_real_run_logs_its_timings(tiny_config, tmp_path):
    run.Experiment(tiny_config(max_steps=4, log_every=2, checkpoint_every=4), tmp_path).train()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4]
    assert lines[0]["compile_s"] > 0 and "compile_s" not in lines[1]
    assert all(line["data_wait_s"] >= 0 and line["max_pause_s"] > 0 and line["images_per_s"] > 0 for line in lines)


def test_a_run_checkpointing_in_a_worker_thread_saves_what_a_run_in_the_loops_thread_saves(tiny_config, tmp_path):
    """``train.checkpoint_in_thread``: the loop donates the state at the step after each save while the worker thread
    still has orbax copy it; every checkpoint still holds the state of its step, as the loop's own thread saves it."""
    saved = {}
    for in_thread in (False, True):
        workdir = tmp_path / str(in_thread)
        experiment = run.Experiment(tiny_config(max_steps=6, checkpoint_every=2, checkpoint_in_thread=in_thread),
                                    workdir)
        experiment.train()
        checkpointer = experiment.checkpointer
        assert checkpointer.all_steps() == [2, 4, 6]
        saved[in_thread] = [flat_params(checkpointer.restore(experiment.state, step)[0].params) for step in (2, 4, 6)]
    for threaded, direct in zip(saved[True], saved[False]):
        assert threaded.keys() == direct.keys()
        for key in direct:
            np.testing.assert_array_equal(threaded[key], direct[key])


class Weighted(NamedTuple):
    """A state with a parameter, as a pytree: the loop checks it before each checkpoint."""
    step: int
    w: jax.Array


@pytest.mark.parametrize("every, expected", [(3, "after step 3, .*: w; .*no checkpoint was written yet"),
                                             (2, "after step 4, .*: w; .*the last good checkpoint is step 2 in ckpt")])
def test_a_state_gone_non_finite_under_a_finite_loss_is_never_saved(tmp_path, every, expected):
    """A step's loss is computed before its update: the loss of step 3 is finite, the state it leaves is not."""
    world = Scripted()

    def train_step(state, batch):
        _, metrics = Scripted.train_step(world, state, batch)
        return Weighted(state.step + 1, state.w + (np.nan if state.step + 1 == 3 else 1.0)), metrics

    with pytest.raises(NonFiniteLossError, match=f"NaN or infinite values {expected}"):
        train_loop(Weighted(0, jnp.zeros(4, jnp.float32)), train_step, world, mesh=make_mesh(), total_steps=7,
                   checkpointer=world, log=MetricsLog(tmp_path), log_every=10, checkpoint_every=every,
                   images_per_step=BATCH, now=world.now)
    assert [e for e in world.events if e.startswith("save ")] == ([] if every == 3 else ["save 2 2"])
    # the checked state's checksums go to the save, which so does not compute them again
    assert [list(summary.checksums) for summary in world.summaries] == ([] if every == 3 else [["w"]])
