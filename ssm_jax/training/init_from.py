"""Start a run from another run's parameters (``config.train.init_from = <its workdir>``): fine-tuning a classifier
from a masked-image pretraining run (``training.pretraining``), or from a model trained on another dataset.

Every parameter of the new model whose path and shape match one in the other run's latest checkpoint is copied, and
so are the running statistics of batch-norm layers (the ResNet classifier's); a pretraining run keeps its network
under ``backbone``, so a classifier finds its parameters there, and a pretraining run started from a classifier (say
masked-image pretraining after ``:fractal``) finds the classifier's at the top. Parameters under a network's top-level
name in ``exclude`` (default the classifier ``head``, whose classes differ between datasets) keep their fresh
initialisation, as do the ones the other run lacks. The copy happens once, when a run starts from scratch; a resumed
run restores its own checkpoint instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict, unflatten_dict

from ssm_jax.training.checkpoint import drop_closed_loop_callbacks, read_error

WRAPPERS = ("backbone",)  # a pretraining model's name for the network it trains


def read_variables(workdir) -> dict:
    """The variables in ``<workdir>/checkpoints``' latest step, as saved: ``params`` and the model's other
    collections (e.g. ``batch_stats``); a clear error when there are none."""
    directory = Path(workdir).expanduser().absolute() / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"config.train.init_from={str(workdir)!r}: no checkpoints folder at {directory}; "
                                f"expected the --workdir of a finished or running training run")
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False),
                                    item_names=("state", "extra"))
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"config.train.init_from={str(workdir)!r}: {directory} holds no finished checkpoint")
    try:
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    except Exception as err:  # orbax raises several types for missing or damaged files
        drop_closed_loop_callbacks()
        raise ValueError(f"config.train.init_from={str(workdir)!r}: checkpoint {directory / str(step)} is "
                         f"unreadable (truncated or damaged?): {read_error(err)}") from err
    params = state.get("params") if isinstance(state, dict) else None
    if not isinstance(params, dict):
        raise ValueError(f"config.train.init_from={str(workdir)!r}: checkpoint {directory / str(step)} has no "
                         f"parameters")
    return {**(state.get("model_state") or {}), "params": params}


def _unwrapped(path: str) -> str:
    """``path`` inside the network: without a leading name from ``WRAPPERS``."""
    first, _, rest = path.partition("/")
    return rest if first in WRAPPERS and rest else path


def copy_matching(params: dict, source: dict, exclude=("head",)) -> tuple[dict, dict]:
    """(``params`` with every entry matched in ``source`` replaced, report). Paths match inside the network, where
    either side may wrap it in one of ``WRAPPERS``; shapes must agree. The report counts copied, excluded, missing and
    mismatched tensors (the latter three as path lists)."""
    own, theirs = flatten_dict(params, sep="/"), flatten_dict(source, sep="/")
    by_inner = {_unwrapped(p): v for p, v in theirs.items()}
    by_inner.update({p: v for p, v in theirs.items() if p == _unwrapped(p)})  # an unwrapped path wins a tie
    out, report = dict(own), {"copied": 0, "excluded": [], "missing": [], "mismatched": []}
    for path, value in own.items():
        inner = _unwrapped(path)
        if inner.split("/")[0] in exclude:
            report["excluded"].append(path)
            continue
        found = by_inner.get(inner)
        if found is None:
            report["missing"].append(path)
        elif tuple(found.shape) != tuple(value.shape):
            report["mismatched"].append(f"{path} {tuple(found.shape)} != {tuple(value.shape)}")
        else:
            out[path] = jnp.asarray(found, value.dtype)
            report["copied"] += 1
    return unflatten_dict(out, sep="/"), report


def load_into(variables: dict, workdir, exclude=("head",)) -> dict:
    """``variables`` with their ``params`` taken from run ``workdir`` where they match (``copy_matching``), and their
    other collections (batch-norm running statistics) likewise, so each copied layer keeps the statistics it was
    trained with; says what was copied, and refuses a checkpoint that shares no parameter with this model."""
    source = read_variables(workdir)
    params, report = copy_matching(variables["params"], source["params"], tuple(exclude))
    if report["copied"] == 0:
        examples = (report["missing"] + report["mismatched"])[:3]
        raise ValueError(f"config.train.init_from={str(workdir)!r}: none of this model's parameters is in that run's "
                         f"checkpoint with the same path and shape (e.g. {examples}); was it trained with another "
                         f"model or preset?")
    if jax.process_index() == 0:
        total = report["copied"] + sum(len(report[k]) for k in ("excluded", "missing", "mismatched"))
        left = report["missing"] + report["mismatched"]
        print(f"init_from {workdir}: copied {report['copied']} of {total} parameter tensors; kept fresh: "
              f"{len(report['excluded'])} excluded ({', '.join(exclude)}), {len(left)} not in the checkpoint or of "
              f"another shape{': ' + ', '.join(left[:5]) if left else ''}{' ...' if len(left) > 5 else ''}",
              flush=True)
        print(f"init_from {workdir}: {own_evaluation(workdir)}", flush=True)
    others = {name: copy_matching(tree, source.get(name, {}), tuple(exclude))[0]
              for name, tree in variables.items() if name != "params"}
    return {**variables, **others, "params": params}


def own_evaluation(workdir) -> str:
    """What run ``workdir`` scored on its own test set (``eval/metrics.json``), to read before starting from it: a
    pretraining that learned nothing is a worse start than fresh weights (a ``:fractal`` run at 0.75 % on 1,000
    classes, docs/elpv_experiments.md). A classifier's accuracy beside what its largest test class alone scores."""
    path = Path(workdir).expanduser() / "eval" / "metrics.json"
    if not path.is_file():
        return f"no evaluation of its own yet ({path} not found)"
    try:  # a line to read, not a reason to stop the run
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"its own evaluation {path} is unreadable ({err})"
    n = summary.get("num_images", 0)
    if "acc" in summary and summary.get("per_class") and n:
        largest = max(c.get("support", 0) for c in summary["per_class"].values()) / n
        return (f"its own test accuracy {100 * summary['acc']:.2f} % on {n:,} images of {len(summary['per_class']):,} "
                f"classes (the largest class alone: {100 * largest:.2f} %)")
    if "masked_l1" in summary:
        return f"its own test masked-pixel error {summary['masked_l1']:.4f} (L1, normalised units) on {n:,} images"
    return f"its own evaluation is in {path}"


def preparer(workdir: str, exclude=("head",)):
    """What ``state.create_state`` applies to fresh variables: ``load_into`` from run ``workdir``, or nothing when
    ``workdir`` is empty."""
    if not workdir:
        return lambda variables: variables
    return lambda variables: load_into(variables, workdir, exclude)
