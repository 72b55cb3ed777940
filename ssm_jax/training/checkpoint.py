"""Orbax checkpoints under ``<workdir>/checkpoints``: the train state plus a JSON side-car.

The side-car holds the data iterator position and a fingerprint of the model (name and parameter shapes), so a
rerun resumes exactly where it stopped, and a workdir holding another model's checkpoint is refused with a clear
error instead of a shape mismatch deep inside orbax. It also holds a checksum of each array of the state: orbax
verifies none, and 16 zeroed bytes in a data file restored as 3,485 values of ~2e-38 in one kernel, found only when
training later stopped on a NaN loss. A restore recomputes them on the arrays read and refuses a checkpoint whose
arrays differ, naming the first; checkpoints written before (no checksums) restore unchecked.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: another model's, unreadable, or with arrays other than those saved."""


class CheckpointSaveError(CheckpointError):
    """A checkpoint that could not be written. Orbax's writer threads of that save then wait on signals that never
    come, for its 5-minute coordination timeout, before the process can end (``cli.run`` ends it at once)."""


_failed_reads: set[str] = set()  # "<checkpoint>/" of each restore that failed in this process


def _names_failed_read(err) -> bool:
    """Whether ``err`` is an error of a read naming a checkpoint whose restore already failed: its other readers
    fail alike, but nothing retrieves their errors, or they are closed mid-read (a tensorstore spec of dozens of
    lines each)."""
    return isinstance(err, Exception) and any(where in str(err) for where in _failed_reads)


def _drop_failed_read_log(record: logging.LogRecord) -> bool:
    """asyncio's "Task exception was never retrieved" of a failed restore's other readers."""
    return not (record.exc_info and _names_failed_read(record.exc_info[1]))


def drop_closed_loop_callbacks(where: Path | None = None) -> None:
    """After orbax fails to read the damaged checkpoint ``where``, the reads still in flight fail or are closed too,
    and their errors reach ``sys.unraisablehook`` ("Exception ignored in: <coroutine object ...>") and the asyncio
    logger as dozens of tracebacks around the one error, in a script as in the CLI, saying nothing it does not.
    Called before a restore and where a read fails; wraps the hook in place and filters the logger (once) to drop
    those and pass anything else on, such as errors of other checkpoints. Without ``where``, only the closed loop's
    errors are dropped."""
    if where is not None:  # as given and with links resolved: tensorstore's messages may name either
        _failed_reads.update({f"{where}{os.sep}", f"{where.resolve()}{os.sep}"})
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_callbacks", False):
        return

    def hook(unraisable) -> None:
        err = unraisable.exc_value
        closed_loop = isinstance(err, RuntimeError) and str(err) == "Event loop is closed"
        if not (closed_loop or _names_failed_read(err)):
            previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    sys.unraisablehook = hook
    asyncio_log = logging.getLogger("asyncio")
    if _drop_failed_read_log not in asyncio_log.filters:
        asyncio_log.addFilter(_drop_failed_read_log)


_WORDS = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint32}  # a value's bits: the words read of them


def _checkable(x) -> bool:
    """Whether ``x`` is a jax.Array of booleans, integers or floats whose bits split into unsigned words (not int4,
    complex or PRNG keys; host values are not checked)."""
    if not isinstance(x, jax.Array):
        return False
    numeric = jnp.issubdtype(x.dtype, jnp.integer) or jnp.issubdtype(x.dtype, jnp.floating)
    return x.dtype == jnp.bool_ or (numeric and jax.dtypes.itemsize_bits(x.dtype) in _WORDS)


@jax.jit
def _summary(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x``'s checksum and whether all its values are finite, in one pass over it. The checksum: ``x``'s bits as
    unsigned integers (bf16 as uint16, float32 as uint32, ...; a 64-bit value as two words), each times its odd
    row-major position number 1, 3, 5, ..., summed modulo 2**32. Integer sums are exact, so the result is the same on
    any sharding or device count; a changed word, or two swapped ones, change it."""
    if x.dtype == jnp.bool_:
        words = x.astype(jnp.uint32)
    else:
        words = jax.lax.bitcast_convert_type(x, _WORDS[jax.dtypes.itemsize_bits(x.dtype)]).astype(jnp.uint32)
    position = jnp.zeros(words.shape, jnp.uint32)
    for axis, size in enumerate(words.shape):
        position = position * jnp.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, words.shape, axis)
    finite = jnp.isfinite(x).all() if jnp.issubdtype(x.dtype, jnp.floating) else jnp.bool_(True)
    return jnp.sum(words * (2 * position + 1), dtype=jnp.uint32), finite


@dataclasses.dataclass(frozen=True)
class StateSummary:
    """What a save records of a state and the loop checks before it: {leaf path ("params/encoder/conv1/kernel"):
    [dtype, checksum]}, and the paths of the floating-point leaves holding NaN or inf, in tree order."""
    checksums: dict[str, list]
    non_finite: list[str]


def summarise(tree) -> StateSummary:
    """The checksums and non-finite leaves of the tree's arrays, computed on their devices and fetched as replicated
    scalars, the same in every process of a multi-process run. One program per distinct shape, dtype and sharding,
    compiled once a process, several at a time (``_compile_new``). For MemoryMamba-tiny's state (1,636 arrays of 63
    shapes, 460 MiB; ``python benchmarks/checkpoint_cost.py``, 2026-12-07): on a lent H100 the first call took 9.4
    s, then 121 ms, where a finiteness check of its own and the checksums fetched one by one took 6.4 + 7.2 s, then
    8 + 243 ms; on the 2-core CPU (``--image-size 64 --batch-size 8``), before the stacked fetch, 10 s then 0.25 s,
    where that check compiled as one program over the tree took 24 s."""
    named = [(jax.tree_util.keystr(path, simple=True, separator="/"), x)
             for path, x in jax.tree_util.tree_leaves_with_path(tree) if _checkable(x)]
    _compile_new([x for _, x in named])
    summaries = _fetch([_summary(x) for _, x in named])
    return StateSummary(checksums={name: [str(x.dtype), int(checksum)]
                                   for (name, x), (checksum, _) in zip(named, summaries)},
                        non_finite=[name for (name, _), (_, finite) in zip(named, summaries) if not finite])


_COMPILERS = 8  # threads compiling a tree's new ``_summary`` programs together
_compiled: set = set()  # the (shape, dtype, sharding) of every ``_summary`` program compiled by ``_compile_new``


def _compile_new(arrays: list) -> None:
    """Compile ``_summary`` for the arrays' (shape, dtype, sharding) not seen yet, ``_COMPILERS`` at a time: XLA
    compiles outside the GIL, and a state's first save compiles one program per distinct array, one after another
    otherwise (60 shapes: 5.2 s, in 2 threads 3.8 s, on this project's 2 cores). ``_summary`` then finds them
    compiled."""
    new = {}
    for x in arrays:
        key = (x.shape, x.dtype, x.sharding)
        if key not in _compiled:
            new.setdefault(key, x)
    if len(new) > 1:
        with concurrent.futures.ThreadPoolExecutor(min(_COMPILERS, len(new)), "summary-compile") as pool:
            list(pool.map(lambda x: _summary.lower(x).compile(), new.values()))
    _compiled.update(new)


_STACK = 256  # (checksum, finite) pairs stacked by one program, whatever the state's size


@jax.jit
def _stacked(pairs):
    return jnp.stack([checksum for checksum, _ in pairs]), jnp.stack([finite for _, finite in pairs])


def _fetch(pairs: list) -> list[tuple[int, bool]]:
    """The (checksum, finite) scalars of ``_summary``, stacked on their devices by ``_STACK`` (the last group padded
    with its first pair, so no state compiles another program) and fetched together: fetched one by one,
    MemoryMamba-tiny's 3,272 scalars took 0.4 s a save on an H100, 3.5 train steps."""
    by_devices: dict[frozenset, list[int]] = {}
    for i, (checksum, _) in enumerate(pairs):
        by_devices.setdefault(frozenset(checksum.sharding.device_set), []).append(i)
    groups = [members[start:start + _STACK] for members in by_devices.values()
              for start in range(0, len(members), _STACK)]
    stacks = [_stacked([pairs[i] for i in group] + [pairs[group[0]]] * (_STACK - len(group))) for group in groups]
    host = jax.device_get([(sums.addressable_data(0), finite.addressable_data(0)) for sums, finite in stacks])
    fetched: list = [None] * len(pairs)
    for group, (sums, finite) in zip(groups, host):
        for i, checksum, ok in zip(group, sums, finite):
            fetched[i] = (int(checksum), bool(ok))
    return fetched


def checksums(tree) -> dict[str, list]:
    """{leaf path: [dtype, checksum]} of the tree's arrays (``summarise``)."""
    return summarise(tree).checksums


def model_fingerprint(model_name: str, params) -> dict:
    """Model name plus a hash of the parameter tree's paths, shapes and dtypes."""
    shapes = [(jax.tree_util.keystr(path), tuple(x.shape), str(x.dtype))
              for path, x in jax.tree_util.tree_leaves_with_path(params)]
    digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
    return {"model": model_name, "params": digest, "num_params": int(sum(x.size for x in jax.tree.leaves(params)))}


def has_checkpoint(workdir) -> bool:
    """Whether ``<workdir>/checkpoints`` holds a finished checkpoint; creates nothing."""
    directory = Path(workdir).absolute() / "checkpoints"
    if not directory.is_dir():
        return False
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False),
                                    item_names=("state", "extra"))
    return manager.latest_step() is not None


def _handlers() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """The state through orbax's tree handler with each jax.Array written by one replica, the extra as JSON.
    Every other type keeps the handler orbax's global registry has for it.

    Unless ``JAX_PLATFORMS`` names a GPU, orbax writes a replicated array in per-replica slices, compiling a slicing
    program per array shape: about 10 s a save of MambaAD-tiny on 4 CPU devices, for nothing, as this data-parallel
    state is small. Checkpoints written either way restore (``tests/training/test_checkpoint.py``).
    """
    types = ocp.type_handlers
    orbax_own = [(t, types.get_type_handler(t)) for t in types.supported_types() if t is not jax.Array]
    arrays = types.create_type_handler_registry(*orbax_own, (jax.Array, types.ArrayHandler(use_replica_parallel=False)))
    state = ocp.PyTreeCheckpointHandler(type_handler_registry=arrays)
    extra = ocp.JsonCheckpointHandler()
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for item, handler, args in (("state", state, ocp.args.PyTreeSave), ("state", state, ocp.args.PyTreeRestore),
                                ("extra", extra, ocp.args.JsonSave), ("extra", extra, ocp.args.JsonRestore)):
        registry.add(item, args, handler)
    return registry


def read_error(err: Exception) -> str:
    """An orbax read error in one line: its type and first line, without the spec of the array that tensorstore
    appends (dozens of lines of JSON), at most 300 characters."""
    reason = re.split(r"\n|See full TensorStore details", str(err), maxsplit=1)[0].strip().rstrip(".")
    return f"{type(err).__name__}: " + (reason if len(reason) <= 300 else reason[:300] + " ...")


def _abstract(leaf):
    """A leaf of a restore template as its shape, dtype and sharding; ``ocp.PLACEHOLDER`` (a leaf not to read) as
    it is."""
    return leaf if leaf is ocp.PLACEHOLDER else ocp.utils.to_shape_dtype_struct(leaf)


class Checkpointer:
    """Save and restore (state, extra) pairs; keeps the newest ``max_to_keep`` steps.

    ``in_thread``: a save not waited for copies the state on its devices and hands the copy to orbax in a worker
    thread, so the caller goes on (and may donate the state) while orbax takes it to the host. Otherwise orbax's save,
    which returns once it has, holds the caller: 1.4 s of the 1.6 s a save of MemoryMamba-tiny's state held the loop on
    an H100 (``benchmarks/checkpoint_cost.py``). The price is a second copy of the state on the devices until orbax
    has it."""

    def __init__(self, workdir, fingerprint: dict, max_to_keep: int = 3, in_thread: bool = False):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.fingerprint = fingerprint
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=_handlers())
        self._worker = concurrent.futures.ThreadPoolExecutor(1, "checkpoint") if in_thread else None
        self._pending: concurrent.futures.Future | None = None

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, extra: dict, wait: bool = True, summary: StateSummary | None = None) -> None:
        """With ``wait``, block until written, so a crash right after loses nothing saved. Without, only copy
        ``state`` (to the host; ``in_thread``: on its devices, and to the host in the worker thread; the caller may
        then donate its buffers) and write it in the background until ``wait_until_finished`` or the next save; an
        interrupted write leaves the previous checkpoint the latest.
        The side-car gets each array's checksum, for ``restore`` to check: from ``summary`` (``summarise(state)``,
        which a caller that checks the state first already has), else computed here."""
        self._join()
        try:
            sums = (summary if summary is not None else summarise(state)).checksums
            extra = {**extra, "fingerprint": self.fingerprint, "step": int(step), "checksums": sums}
            if wait or self._worker is None:
                self._orbax_save(step, state, extra)
                if wait:
                    self.wait_until_finished()
            else:  # the copy, made now: the caller may donate ``state`` once this returns
                self._pending = self._worker.submit(self._in_thread, step, jax.device_put(state, may_alias=False),
                                                    extra)
        except Exception as err:  # disk full, no permission, an array orbax cannot write, ...
            raise self._save_error(step, err) from err

    def _orbax_save(self, step: int, state, extra: dict) -> None:
        self._manager.save(int(step), args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                                             extra=ocp.args.JsonSave(extra)))

    def _in_thread(self, step: int, state, extra: dict) -> None:
        """The worker thread's save, its failure raised by the next ``save`` or ``wait_until_finished``."""
        try:
            self._orbax_save(step, state, extra)
        except Exception as err:
            raise self._save_error(step, err) from err

    def _save_error(self, step: int, err: Exception) -> CheckpointSaveError:
        kept = [s for s in self.all_steps() if s != step]
        return CheckpointSaveError(
            f"could not write the checkpoint of step {step} to {self.directory}: {read_error(err)}. "
            + (f"Checkpoints kept: steps {kept}; a rerun resumes from step {kept[-1]}." if kept
               else "No earlier checkpoint exists."))

    def _join(self) -> None:
        """Wait for a save handed to the worker thread, raising its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def wait_until_finished(self) -> None:
        self._join()
        self._manager.wait_until_finished()

    def restore(self, state_template, step: int | None = None):
        """Restore ``step`` (default latest) into the structure and shardings of ``state_template``, and check the
        arrays read against the checksums saved with them (``_check_arrays``).

        Returns (state, extra), or None when the workdir has no checkpoint yet.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        where = self.directory / str(step)
        drop_closed_loop_callbacks()  # now: a failing read's first callbacks into its closed loop come before it raises
        try:
            extra = self._manager.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))["extra"]
        except Exception as err:  # orbax raises several types for missing or damaged files
            raise self._unreadable(where, step, err) from err
        saved = extra.get("fingerprint", {})
        if saved.get("model") != self.fingerprint["model"] or saved.get("params") != self.fingerprint["params"]:
            raise CheckpointError(
                f"{where} holds a checkpoint of model {saved.get('model')!r} ({saved.get('num_params')} parameters), "
                f"but this run builds {self.fingerprint['model']!r} ({self.fingerprint['num_params']} parameters) "
                f"with a different parameter tree. Use a new --workdir, or the config that wrote this one "
                f"(--config=configs/from_run.py:{self.directory.parent} reads its config.json).")
        abstract = jax.tree.map(_abstract, state_template)
        try:
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(abstract, restore_args=restore_args)))
        except Exception as err:
            if "tree structures do not match" in str(err):  # orbax's words for a state of another shape
                raise CheckpointError(
                    f"{where} holds a train state of another structure than this run builds (the optimizer's state "
                    f"differs: settings such as optim.ema_decay, optim.layer_decay, optim.grad_clip or optim.name "
                    f"changed since it was written). Resume with the config that wrote it (see "
                    f"{self.directory.parent / 'config.json'}), or use a new --workdir.") from err
            raise self._unreadable(where, step, err) from err
        self._check_arrays(where, step, restored["state"], extra.get("checksums"))
        return restored["state"], extra

    def _check_arrays(self, where: Path, step: int, state, saved: dict | None) -> None:
        """Refuse ``state`` where an array's checksum differs from the one saved. Arrays restored as another dtype
        than saved, or not restored (``ocp.PLACEHOLDER``), are not compared; a checkpoint written before checksums
        were saved (``saved`` None) is not checked."""
        if saved is None:
            return
        restored = checksums(state)
        compared = [name for name, (dtype, _) in restored.items() if saved.get(name, [None])[0] == dtype]
        differ = [name for name in compared if restored[name] != saved[name]]
        if differ:
            raise CheckpointError(
                f"checkpoint {where} is damaged: {differ[0]} read back is not the array saved (checksum "
                f"{restored[differ[0]][1]:#010x}, saved {saved[differ[0]][1]:#010x}; {len(differ)} of the "
                f"{len(compared)} arrays read differ). {self._fall_back(where, step)}.")

    def _fall_back(self, where: Path, step: int) -> str:
        """What to do instead of using the damaged checkpoint ``where``: the earlier ones, if any."""
        others = [s for s in self.all_steps() if s != step]
        return (f"earlier checkpoints: steps {others}; move {where} aside to resume, evaluate or predict from step "
                f"{others[-1]}" if others else "no earlier checkpoint exists; train again in a new --workdir")

    def _unreadable(self, where: Path, step: int, err: Exception) -> CheckpointError:
        """The error for a damaged checkpoint, naming the earlier ones; quiets the failed read's aftermath."""
        drop_closed_loop_callbacks(where)
        return CheckpointError(f"checkpoint {where} is unreadable (truncated or damaged?): {read_error(err)}. "
                               f"{self._fall_back(where, step)}.")

    def close(self) -> None:
        try:
            self._join()
        finally:
            self._manager.close()
            if self._worker is not None:
                self._worker.shutdown()
