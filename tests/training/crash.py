"""Simulated crashes for the resume tests of every task family."""


def crash_during_step(monkeypatch, family_module, step: int = 5) -> None:
    """Make ``family_module.make_train_step`` build steps that raise KeyboardInterrupt during step ``step``
    (counted from the run's start); ``monkeypatch.undo()`` restores the real one."""
    real_make = family_module.make_train_step

    def crashing_make(loss_config, mesh, *args, **kwargs):
        step_fn, calls = real_make(loss_config, mesh, *args, **kwargs), []

        def crashing_step(state, batch):
            calls.append(1)
            if len(calls) == step:
                raise KeyboardInterrupt("simulated crash")
            return step_fn(state, batch)

        return crashing_step

    monkeypatch.setattr(family_module, "make_train_step", crashing_make)
