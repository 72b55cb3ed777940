"""Orbax checkpoints under ``<workdir>/checkpoints``: the train state plus a JSON side-car.

The side-car holds the data iterator position and a fingerprint of the model (name and parameter shapes), so a
rerun resumes exactly where it stopped, and a workdir holding another model's checkpoint is refused with a clear
error instead of a shape mismatch deep inside orbax.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: another model's, or unreadable."""


class CheckpointSaveError(CheckpointError):
    """A checkpoint that could not be written. Orbax's writer threads of that save then wait on signals that never
    come, for its 5-minute coordination timeout, before the process can end (``cli.run`` ends it at once)."""


def drop_closed_loop_callbacks() -> None:
    """After orbax fails to read a damaged checkpoint, tensorstore's reads still in flight call back into the asyncio
    loop it has closed; their "Event loop is closed" errors reach ``sys.unraisablehook`` as dozens of tracebacks
    around the one error, in a script as in the CLI, and say nothing it does not. Called where a read fails; wraps the
    hook in place (once) to drop those and pass anything else on."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_callbacks", False):
        return

    def hook(unraisable) -> None:
        err = unraisable.exc_value
        if not (isinstance(err, RuntimeError) and str(err) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    sys.unraisablehook = hook


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
    """Save and restore (state, extra) pairs; keeps the newest ``max_to_keep`` steps."""

    def __init__(self, workdir, fingerprint: dict, max_to_keep: int = 3):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.fingerprint = fingerprint
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=_handlers())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, extra: dict, wait: bool = True) -> None:
        """With ``wait``, block until written, so a crash right after loses nothing saved. Without, only copy
        ``state`` (the caller may then donate its buffers) and write it in the background until
        ``wait_until_finished`` or the next save; an interrupted write leaves the previous checkpoint the latest."""
        extra = {**extra, "fingerprint": self.fingerprint, "step": int(step)}
        try:
            self._manager.save(int(step), args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                                                 extra=ocp.args.JsonSave(extra)))
            if wait:
                self.wait_until_finished()
        except Exception as err:  # disk full, no permission, an array orbax cannot write, ...
            kept = [s for s in self.all_steps() if s != step]
            raise CheckpointSaveError(
                f"could not write the checkpoint of step {step} to {self.directory}: {read_error(err)}. "
                + (f"Checkpoints kept: steps {kept}; a rerun resumes from step {kept[-1]}." if kept
                   else "No earlier checkpoint exists.")) from err

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def restore(self, state_template, step: int | None = None):
        """Restore ``step`` (default latest) into the structure and shardings of ``state_template``.

        Returns (state, extra), or None when the workdir has no checkpoint yet.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        where = self.directory / str(step)
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
        return restored["state"], extra

    def _unreadable(self, where: Path, step: int, err: Exception) -> CheckpointError:
        """The error for a damaged checkpoint, naming the earlier ones; quiets the failed read's aftermath."""
        drop_closed_loop_callbacks()
        others = [s for s in self.all_steps() if s != step]
        hint = (f"earlier checkpoints: steps {others}; move {where} aside to resume, evaluate or predict from step "
                f"{others[-1]}" if others else "no earlier checkpoint exists; train again in a new --workdir")
        return CheckpointError(f"checkpoint {where} is unreadable (truncated or damaged?): {read_error(err)}. {hint}.")

    def close(self) -> None:
        self._manager.close()
