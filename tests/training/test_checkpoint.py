"""Checkpointer: a replicated state saves without compiling per-replica slices, restores onto its sharding, and
checkpoints written through orbax's standard handler (before 2026-12-02) still restore. Each array's checksum is
saved with it and checked on restore: a damaged data file is refused naming the array, not read as wrong values."""

import json
import logging
import os
import re
import sys
import threading
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from ssm_jax.training.checkpoint import (Checkpointer, CheckpointError, CheckpointSaveError, checksums,
                                        model_fingerprint, summarise)
from ssm_jax.training.ema import evaluation_template, param_ema
from ssm_jax.training.state import TrainState


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

    checksums(state)  # compiles the checksum's programs, which every save runs
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


def test_a_damaged_checkpoint_is_one_error_without_the_closed_loops_noise(tmp_path, monkeypatch, caplog):
    """A truncated file: one ``CheckpointError`` naming it; the failed read's late callbacks into orbax's closed
    asyncio loop ("Event loop is closed") and the errors of its other readers naming this checkpoint (unraisable
    from closed coroutines, or logged by asyncio as never retrieved: dozens of tracebacks, 1 run in 7) are dropped,
    in a script as in the CLI; any other error, also the same one of another checkpoint, still gets through."""
    state = _replicated_state()
    checkpointer = Checkpointer(tmp_path, model_fingerprint("m", state))
    checkpointer.save(7, state, {"position": 3})
    for data in (tmp_path / "checkpoints" / "7" / "state").rglob("d/*"):  # the arrays' data files
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)  # the hook before; put back after the test
    with pytest.raises(CheckpointError, match=r"checkpoint .*7 is unreadable \(truncated or damaged\?\)") as err:
        checkpointer.restore(jax.tree.map(jnp.zeros_like, state))
    checkpointer.close()
    read = err.value.__cause__  # orbax's error, naming files of this checkpoint as its other readers' errors do
    elsewhere = Exception(str(read).replace(f"checkpoints{os.sep}7{os.sep}", f"checkpoints{os.sep}70{os.sep}"))
    sent = (RuntimeError("Event loop is closed"), RuntimeError("another"), ValueError("Event loop is closed"), read,
            elsewhere)
    for late in sent:
        sys.unraisablehook(types.SimpleNamespace(exc_value=late))
    # only the errors sent here: the failed read's own late ones come when they come (later on a loaded machine)
    passed = [u.exc_value for u in seen if any(u.exc_value is s for s in sent)]
    assert passed == [sent[1], sent[2], elsewhere]
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for late in (read, elsewhere):
            logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=late)
    logged = [r.exc_info[1] for r in caplog.records if r.exc_info and any(r.exc_info[1] is s for s in sent)]
    assert logged == [elsewhere]


def test_the_closed_loops_noise_before_a_failed_read_raises_is_dropped_too(tmp_path, monkeypatch):
    """Orbax's reads may call back into their closed loop before the read raises (1-10 tracebacks in about half of
    the failed restores): the hook is in place from the restore's start."""
    state = _replicated_state()
    checkpointer = Checkpointer(tmp_path, model_fingerprint("m", state))
    checkpointer.save(7, state, {})
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    early, other = RuntimeError("Event loop is closed"), RuntimeError("another")

    def read_that_fails(*_args, **_kwargs):
        for late in (early, other):
            sys.unraisablehook(types.SimpleNamespace(exc_value=late))
        raise OSError("a truncated file")

    monkeypatch.setattr(checkpointer._manager, "restore", read_that_fails)
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpointer.restore(jax.tree.map(jnp.zeros_like, state))
    assert [u.exc_value for u in seen] == [other]
    checkpointer.close()


def _data_files(workdir, step: int) -> list:
    """The files of orbax's data (the arrays' bytes, zstd-compressed) of checkpoint ``step``, largest first."""
    files = (workdir / "checkpoints" / str(step) / "state").rglob("d/*")
    return sorted(files, key=lambda path: path.stat().st_size, reverse=True)


def _flip_middle_bytes(path, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
    path.write_bytes(bytes(data))


def _random_state():
    """A kernel of random values, most of the data file's bytes, beside small arrays of other dtypes; replicated."""
    sharding = NamedSharding(jax.make_mesh((4,), ("data",)), PartitionSpec())
    rng = np.random.default_rng(0)
    tree = {"params": {"encoder": {"conv1": {"kernel": rng.normal(size=(128, 512)).astype(np.float32)}},
                       "head": {"bias": rng.normal(size=(10,)).astype(jnp.bfloat16)}},
            "counts": np.arange(-3, 4, dtype=np.int8), "seen": np.array([True, False, True]), "step": np.int32(7)}
    return jax.device_put(tree, sharding)


def test_a_byte_flipped_data_file_is_refused_naming_the_array(tmp_path):
    """Orbax checks no checksum: 16 bytes flipped in the kernel's zstd-compressed data decode, without an error, to
    other values. The checksums saved with the checkpoint refuse it, naming the array and the earlier step."""
    state = _random_state()
    checkpointer = Checkpointer(tmp_path, model_fingerprint("m", state))
    checkpointer.save(6, state, {})
    checkpointer.save(7, state, {})
    _flip_middle_bytes(_data_files(tmp_path, 7)[0])
    where = re.escape(str(tmp_path / "checkpoints" / "7"))
    with pytest.raises(CheckpointError, match=rf"checkpoint {where} is damaged: params/encoder/conv1/kernel read back "
                                              rf"is not the array saved .*1 of the 5 arrays read differ\). earlier "
                                              rf"checkpoints: steps \[6\]; move {where} aside .* from step 6\.$"):
        checkpointer.restore(jax.tree.map(jnp.zeros_like, state))
    restored, _ = checkpointer.restore(jax.tree.map(jnp.zeros_like, state), step=6)
    np.testing.assert_array_equal(restored["params"]["encoder"]["conv1"]["kernel"],
                                  state["params"]["encoder"]["conv1"]["kernel"])
    checkpointer.close()


def test_evaluation_restores_are_checked_too(tmp_path):
    """eval.py and the Predictor restore with ``evaluation_template``: the optimizer's moments are not read (and not
    compared), the parameters and their average (kernel and norm) are."""
    params = {"encoder": {"conv1": {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(128, 512)),
                                                          jnp.float32)}}}
    state = TrainState.create(apply_fn=None, params=params, tx=optax.chain(optax.adam(0.1), param_ema(0.9)))
    checkpointer = Checkpointer(tmp_path, model_fingerprint("m", params))
    checkpointer.save(2, state, {})
    template = evaluation_template(jax.tree.map(jnp.zeros_like, state))
    restored, _ = checkpointer.restore(template)  # untouched: restores
    np.testing.assert_array_equal(restored.params["encoder"]["conv1"]["kernel"], params["encoder"]["conv1"]["kernel"])
    _flip_middle_bytes(_data_files(tmp_path, 2)[0])  # in the kernel: the other arrays are zeros, a few bytes
    with pytest.raises(CheckpointError, match=r"checkpoints/2 is damaged: params/encoder/conv1/kernel read back "
                                              r"is not the array saved .*1 of the 3 arrays read differ"):
        checkpointer.restore(template)
    checkpointer.close()


def test_an_untouched_checkpoint_restores_bit_exactly_onto_another_sharding(tmp_path):
    """Every array's checksum is saved (bf16, int8 and bool ones too) and matches on restore, onto another
    sharding than the one saved: the checksums are exact integer sums, the same on any sharding."""
    state = _random_state()
    mesh = jax.make_mesh((4,), ("data",))
    kernel = state["params"]["encoder"]["conv1"]["kernel"]
    state["params"]["encoder"]["conv1"]["kernel"] = jax.device_put(kernel, NamedSharding(mesh, PartitionSpec("data")))
    assert checksums(state) == checksums(jax.device_put(jax.device_get(state), jax.devices()[0]))
    checkpointer = Checkpointer(tmp_path, model_fingerprint("m", state))
    checkpointer.save(7, state, {})
    replicated = NamedSharding(mesh, PartitionSpec())
    restored, extra = checkpointer.restore(jax.tree.map(lambda x: jnp.zeros_like(x, device=replicated), state))
    checkpointer.close()
    assert sorted(extra["checksums"]) == ["counts", "params/encoder/conv1/kernel", "params/head/bias", "seen", "step"]
    assert extra["checksums"]["params/head/bias"][0] == "bfloat16"
    for restored_array, saved in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        assert restored_array.sharding == replicated and restored_array.dtype == saved.dtype
        assert np.asarray(restored_array).tobytes() == np.asarray(saved).tobytes()


def test_a_checkpoint_saved_without_checksums_restores(tmp_path):
    """A checkpoint the Checkpointer wrote before checksums were saved restores as before, unchecked."""
    state = _random_state()
    checkpointer = Checkpointer(tmp_path, model_fingerprint("m", state))
    checkpointer.save(7, state, {"position": 3})
    side_car = tmp_path / "checkpoints" / "7" / "extra" / "metadata"
    extra = json.loads(side_car.read_text())
    del extra["checksums"]
    side_car.write_text(json.dumps(extra))
    restored, extra = checkpointer.restore(jax.tree.map(jnp.zeros_like, state))
    checkpointer.close()
    assert extra["position"] == 3 and "checksums" not in extra
    for restored_array, saved in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(restored_array, saved)


def test_summarise_names_the_non_finite_float_leaves_in_tree_order_and_checksums_every_array():
    state = _random_state()
    clean = summarise(state)
    assert clean.non_finite == [] and clean.checksums == checksums(state)
    host = jax.tree.map(np.array, jax.device_get(state))  # writable copies
    host["params"]["head"]["bias"][3] = np.inf
    host["params"]["encoder"]["conv1"]["kernel"][0, 5] = np.nan
    broken = summarise(jax.device_put(host, jax.devices()[0]))
    assert broken.non_finite == ["params/encoder/conv1/kernel", "params/head/bias"]
    assert broken.checksums["counts"] == clean.checksums["counts"]
    assert broken.checksums["params/head/bias"] != clean.checksums["params/head/bias"]


def test_summarise_compiles_a_program_per_distinct_array_once_not_one_per_tree():
    """One program over the whole tree took 24 s to compile for MemoryMamba-tiny's 1,636 arrays on the CPU, and
    again for any other tree; one per distinct shape and dtype, compiled once a process, 7 s
    (benchmarks/checkpoint_cost.py). A tree of other leaves of those shapes compiles nothing."""
    first = {f"w{i}": jnp.full((3 + i % 2, 5), float(i)) for i in range(40)}
    other = {f"v{i}": jnp.full((3 + i % 2, 5), -float(i)) for i in range(60)}
    compiled = []

    def on_duration(event, _secs, **_):
        if event.endswith("backend_compile_duration"):
            compiled.append(event)

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    try:
        summary = summarise(first)
        first_compiles = len(compiled)
        summarise(other)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
    assert first_compiles <= 3 and len(compiled) == first_compiles  # two shapes' and the stacking's
    assert len(summary.checksums) == 40 and summary.non_finite == []


def test_summarise_compiles_a_trees_new_programs_in_threads_and_each_once():
    """A state's first save compiles a program per distinct array: in a pool of threads (XLA compiles outside the
    GIL), and ``_summary`` then runs them without compiling them again."""
    tree = {f"w{i}": jnp.full((7, 11 + i), float(i)) for i in range(6)}  # shapes no other test summarises
    threads = []

    def on_duration(event, _secs, **_):
        if event.endswith("backend_compile_duration"):
            threads.append(threading.current_thread().name)

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    try:
        summary = summarise(tree)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
    assert sum(name.startswith("summary-compile") for name in threads) == 6
    assert len(threads) <= 7  # and at most the stacking's program, in this thread
    assert summary.checksums == {name: checksums({"x": x})["x"] for name, x in tree.items()}


def test_summarise_fetches_the_scalars_stacked_not_one_by_one(monkeypatch):
    """3,272 scalars fetched one by one took 0.4 s a save on an H100 (3.5 train steps of MemoryMamba-tiny)."""
    fetched = []
    device_get = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda tree: fetched.append(len(jax.tree.leaves(tree))) or device_get(tree))
    tree = {f"w{i}": jnp.full((3, 5), float(i)).at[0, 0].set(np.nan if i == 301 else 0.0) for i in range(600)}
    summary = summarise(tree)
    assert fetched == [2 * 3]  # (checksums, finite) of three stacks of 256
    assert summary.non_finite == ["w301"]
    assert summary.checksums == {name: checksums({"x": x})["x"] for name, x in tree.items()}  # each leaf alone


def test_a_save_writes_the_checksums_of_the_summary_it_is_given(tmp_path):
    """The loop hands the save the summary its finiteness check computed, so the state is read once, not twice: the
    side-car holds that summary's checksums (a stale one would then be refused on restore)."""
    state = _random_state()
    other = summarise({**state, "counts": state["counts"] + 1})
    checkpointer = Checkpointer(tmp_path, model_fingerprint("m", state))
    checkpointer.save(3, state, {}, summary=other)
    with pytest.raises(CheckpointError, match=r"counts read back is not the array saved"):
        checkpointer.restore(jax.tree.map(jnp.zeros_like, state))
    checkpointer.close()


def test_a_save_in_the_worker_thread_holds_the_state_as_it_was_though_the_caller_deletes_it(tmp_path):
    """``in_thread``: the loop's next step donates the state as soon as ``save`` returns, while orbax still copies it
    in the worker thread; the save keeps a copy on the devices, so the checkpoint holds the values given."""
    state = _random_state()
    expected = jax.device_get(state)
    checkpointer = Checkpointer(tmp_path, model_fingerprint("m", state), in_thread=True)
    checkpointer.save(3, state, {"position": 5}, wait=False)
    for leaf in jax.tree.leaves(state):
        leaf.delete()  # what donation does to the caller's buffers
    checkpointer.wait_until_finished()
    restored, extra = checkpointer.restore(jax.tree.map(jnp.zeros_like, _random_state()))
    assert extra["position"] == 5 and checkpointer.all_steps() == [3]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), expected)
    checkpointer.close()


def test_a_failed_save_in_the_worker_thread_is_raised_by_the_next_wait_naming_its_step(tmp_path, monkeypatch):
    state = _random_state()
    checkpointer = Checkpointer(tmp_path, model_fingerprint("m", state), in_thread=True)
    checkpointer.save(2, state, {}, wait=False)
    checkpointer.wait_until_finished()

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpointer._manager, "save", disk_full)
    checkpointer.save(4, state, {}, wait=False)  # returns: the failure is the worker thread's
    with pytest.raises(CheckpointSaveError, match=r"could not write the checkpoint of step 4 .*No space left on "
                                                  r"device.*Checkpoints kept: steps \[2\]"):
        checkpointer.wait_until_finished()
    checkpointer.wait_until_finished()  # raised once, not again
    checkpointer.close()
