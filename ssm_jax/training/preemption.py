"""Stop a training run cleanly when it is asked to (SIGTERM, Ctrl-C): checkpoint at the next step, then exit.

Cluster schedulers (SLURM on preemption or at the time limit, Kubernetes on eviction), ``timeout`` and ``kill``
send SIGTERM and kill the process a grace period later; a person at the terminal presses Ctrl-C (SIGINT). Without a
handler the steps since the last periodic checkpoint are lost; with it the loop finishes the step it is on, saves a
checkpoint there and raises ``Preempted``, and the same command resumes from that step with the same result. A
second Ctrl-C interrupts at once.

In a multi-process job every process must save at the same step (the save is collective), so the decision is
JAX's preemption sync point (``multihost_utils.reached_preemption_sync_point``): JAX's coordination service
notices SIGTERM on any process and all of them agree on a step. One process alone uses its own SIGTERM handler.
"""

from __future__ import annotations

import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
    """The run stopped on request after checkpointing ``step``; rerunning the same command resumes there.
    ``exit_code`` is the shell's for the signal: 143 for SIGTERM, 130 for Ctrl-C."""

    def __init__(self, step: int, directory, signum: int):
        name = signal.Signals(signum).name
        super().__init__(f"stopped on request ({name}) after step {step}; its checkpoint is in {directory}: run the "
                         f"same command again to resume from it" if step else
                         f"stopped on request ({name}) before the first step: run the same command again to start")
        self.step = step
        self.exit_code = 128 + signum


class StopSignal(BaseException):
    """SIGTERM outside the training loop (compiling, evaluating, building SNARM's bank), raised where the program is so
    that it unwinds, stopping its data workers, instead of dying with them left behind. A ``BaseException``, like
    ``KeyboardInterrupt``, so that no ``except Exception`` swallows it. ``exit_code`` 143."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def raise_on_sigterm() -> None:
    """SIGTERM raises ``StopSignal`` from here on, where it would end the process at once: one process (a job of
    several leaves SIGTERM to JAX's preemption service), the main thread, the default action in place.
    ``StopRequest`` replaces it inside the training loop and puts it back after."""
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_stop_signal)


def _raise_stop_signal(signum, frame):
    raise StopSignal(signum)


class StopRequest:
    """Context manager: while active, ``requested(step)`` says whether the run should checkpoint and stop now.

    Called once per step, at the same steps on every process. One process: SIGTERM or a first Ctrl-C sets
    ``signum`` (a second Ctrl-C raises ``KeyboardInterrupt``; SIGINT is left alone where it is ignored, as in a
    background job; the previous handlers are restored on exit; off the main thread, where Python cannot install
    handlers, nothing is watched). Several processes: JAX's preemption sync point decides, on SIGTERM.
    """

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            watched = [signal.SIGTERM]
            if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored in a background job: left so
                watched.append(signal.SIGINT)
            self._previous = {signum: signal.signal(signum, self._on_signal) for signum in watched}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False

    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            print("\nCtrl-C: checkpointing after this step, then stopping; press Ctrl-C again to stop at once "
                  "(losing the steps since the last checkpoint)", file=sys.stderr, flush=True)
        if self.signum is None:
            self.signum = signum

    def requested(self, step: int) -> bool:
        if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
            self.signum = signal.SIGTERM  # what JAX's coordination service watches
        return self.signum is not None
