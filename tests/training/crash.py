"""Simulated crashes and stop requests for the resume tests of every task family."""

import os
import signal


def _interrupt():
    raise KeyboardInterrupt("simulated crash")


def _terminate():
    os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler's preemption or `timeout` would; the step still runs


def crash_during_step(monkeypatch, family_module, step: int = 5, sigterm: bool = False) -> None:
    """Make ``family_module.make_train_step`` build steps that raise KeyboardInterrupt during step ``step``
    (counted from the run's start), or with ``sigterm`` send this process SIGTERM then; ``monkeypatch.undo()``
    restores the real one."""
    real_make = family_module.make_train_step

    def crashing_make(loss_config, mesh, *args, **kwargs):
        step_fn, calls = real_make(loss_config, mesh, *args, **kwargs), []

        def crashing_step(state, batch):
            calls.append(1)
            if len(calls) == step:
                (_terminate if sigterm else _interrupt)()
            return step_fn(state, batch)

        return crashing_step

    monkeypatch.setattr(family_module, "make_train_step", crashing_make)
