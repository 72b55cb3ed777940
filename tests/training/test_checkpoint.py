"""Checkpointer: a replicated state saves without compiling per-replica slices, restores onto its sharding, and
checkpoints written through orbax's standard handler (before 2026-12-02) still restore."""

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from ssm_jax.training.checkpoint import Checkpointer, CheckpointError, model_fingerprint


def _replicated_state():
    sharding = NamedSharding(jax.make_mesh((4,), ("data",)), PartitionSpec())
    tree = {"w": np.arange(24.0, dtype=np.float32).reshape(4, 6), "b": np.arange(5, dtype=np.int32),
            "step": np.int32(7)}
    return jax.device_put(tree, sharding)


def test_replicated_state_saves_without_compiling_and_restores_onto_its_sharding(tmp_path):
    state = _replicated_state()
    checkpointer = Checkpointer(tmp_path, model_fingerprint("m", state))
    compiled = []

    def on_duration(event, _secs, **_):
        if event.endswith("backend_compile_duration"):
            compiled.append(event)

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    try:
        checkpointer.save(7, state, {"position": 3})
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
    assert compiled == []  # orbax's replica-parallel writing compiles a slice per array shape
    template = jax.tree.map(jnp.zeros_like, state)
    restored, extra = checkpointer.restore(template)
    assert extra["position"] == 3 and extra["step"] == 7
    for key in state:
        np.testing.assert_array_equal(restored[key], state[key])
        assert restored[key].sharding == template[key].sharding
    checkpointer.close()


def test_checkpoints_from_the_standard_handler_restore(tmp_path):
    state = _replicated_state()
    fingerprint = model_fingerprint("m", state)
    manager = ocp.CheckpointManager(tmp_path / "checkpoints", options=ocp.CheckpointManagerOptions(create=True),
                                    item_names=("state", "extra"))
    manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            extra=ocp.args.JsonSave({"fingerprint": fingerprint, "step": 7})))
    manager.wait_until_finished()
    manager.close()
    restored, extra = Checkpointer(tmp_path, fingerprint).restore(jax.tree.map(jnp.zeros_like, state))
    assert extra["step"] == 7
    for key in state:
        np.testing.assert_array_equal(restored[key], state[key])


def test_a_damaged_checkpoint_is_one_error_without_the_closed_loops_noise(tmp_path, monkeypatch):
    """A truncated file: one ``CheckpointError`` naming it; the failed read's late callbacks into orbax's closed
    asyncio loop ("Event loop is closed", dozens of tracebacks) are dropped, in a script as in the CLI, and any
    other unraisable error still reaches the hook that was there before."""
    state = _replicated_state()
    checkpointer = Checkpointer(tmp_path, model_fingerprint("m", state))
    checkpointer.save(7, state, {"position": 3})
    for data in (tmp_path / "checkpoints" / "7" / "state").rglob("d/*"):  # the arrays' data files
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)  # the hook before; put back after the test
    with pytest.raises(CheckpointError, match=r"checkpoint .*7 is unreadable \(truncated or damaged\?\)"):
        checkpointer.restore(jax.tree.map(jnp.zeros_like, state))
    checkpointer.close()
    seen.clear()  # whatever the failed read left behind so far: only the hook's own filtering is under test
    for err in (RuntimeError("Event loop is closed"), RuntimeError("another"), ValueError("Event loop is closed")):
        sys.unraisablehook(types.SimpleNamespace(exc_value=err))
    assert [(type(u.exc_value), str(u.exc_value)) for u in seen] == [(RuntimeError, "another"),
                                                                     (ValueError, "Event loop is closed")]
