"""Stop a training run cleanly when it is asked to (SIGTERM): checkpoint at the next step, then exit.

Cluster schedulers (SLURM on preemption or at the time limit, Kubernetes on eviction), ``timeout`` and ``kill``
send SIGTERM and kill the process a grace period later. Without a handler the steps since the last periodic
checkpoint are lost; with it the loop finishes the step it is on, saves a checkpoint there and raises
``Preempted``, and the same command resumes from that step with the same result.

In a multi-process job every process must save at the same step (the save is collective), so the decision is
JAX's preemption sync point (``multihost_utils.reached_preemption_sync_point``): JAX's coordination service
notices SIGTERM on any process and all of them agree on a step. One process alone uses its own SIGTERM handler.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils


class Preempted(Exception):
    """The run stopped on request after checkpointing ``step``; rerunning the same command resumes there."""

    def __init__(self, step: int, directory):
        super().__init__(f"stopped on request (SIGTERM) after step {step}; its checkpoint is in {directory}: run the "
                         f"same command again to resume from it")
        self.step = step


class StopRequest:
    """Context manager: while active, ``requested(step)`` says whether the run should checkpoint and stop now.

    Called once per step, at the same steps on every process. One process: SIGTERM sets a flag (the previous
    handler is restored on exit; off the main thread, where Python cannot install handlers, nothing is watched).
    Several processes: JAX's preemption sync point decides.
    """

    def __init__(self):
        self._flag = False
        self._previous = None

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return False

    def _on_signal(self, signum, frame):
        self._flag = True

    def requested(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._flag
