"""Prediction over a sharded evaluation set, shared by the task families.

Each process reads its shard of the examples; all run the same number of steps (a process whose shard is
exhausted feeds padding), as every step is a collective; every process gets every prediction, padding dropped.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from ssm_jax.training.mesh import shard_batch


def _padded(batch: dict | None, size: int, template: dict) -> tuple[dict, np.ndarray]:
    """A batch of exactly ``size`` rows plus a validity mask; None (this process ran out) gives all-padding."""
    if batch is None:
        batch = {k: v[:0] for k, v in template.items()}
    n = len(batch["image"])
    padded = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
    return padded, np.arange(size) < n


def rows_in_source_order(source, indices):
    """(record, row) for every record of ``source`` in order, ``row`` being its row in predictions gathered with
    ``indices`` (their source indices), or None for an image that has none (skipped as unreadable)."""
    row_of = {int(index): row for row, index in enumerate(indices)}
    return ((record, row_of.get(index)) for index, record in enumerate(source))


def gather_predictions(state, predict_step, batches, *, num_examples: int, local_batch: int, mesh,
                       keep: Callable[[dict], dict], example: Callable[[], dict] | None = None) -> dict:
    """``predict_step(state, images) -> dict of arrays`` over every example of an evaluation iterator.

    Returns the step's outputs plus ``keep(batch)`` (host arrays taken from each input batch, e.g. labels and
    source indices), each concatenated over all batches of all processes, padding rows dropped; in source order
    when ``keep`` gives the source ``indices``, so that what is written from them does not depend on the process
    count.
    ``example()`` (a batch like the iterator's, ``data.pipeline.first_example``) shapes the padding of a process
    that has no batch at all (its shard was empty, or every image in it was skipped as corrupt); called only then.
    """
    per_process = -(-num_examples // jax.process_count())
    steps = -(-per_process // local_batch)
    gathered, valid_rows = {}, []
    template = None
    for _ in tqdm(range(steps), desc="eval", unit="batch", disable=jax.process_index() != 0, leave=False):
        batch = next(batches, None)
        host = None if batch is None else {"image": batch["image"], **keep(batch)}
        if template is None and host is None:
            if example is None:
                raise ValueError("gather_predictions: this process has no batch to score and no example to pad with")
            first = example()
            host = {"image": first["image"][:0], **{k: v[:0] for k, v in keep(first).items()}}
        template = host if template is None else template
        padded, valid = _padded(host, local_batch, template)
        outputs = predict_step(state, shard_batch({"image": padded.pop("image")}, mesh)["image"])
        for key, value in {**outputs, **padded}.items():
            gathered.setdefault(key, []).append(np.asarray(multihost_utils.process_allgather(value, tiled=True)))
        valid_rows.append(np.asarray(multihost_utils.process_allgather(valid, tiled=True)))
    if next(batches, None) is not None:
        raise RuntimeError(f"gather_predictions: the evaluation input still had batches after {steps} steps of "
                           f"{local_batch} for {num_examples} examples; expected full batches of {local_batch} "
                           "(only the last may be short), else examples would go unscored")
    valid = np.concatenate(valid_rows)
    out = {k: np.concatenate(v)[valid] for k, v in gathered.items()}
    if "indices" in out:  # source order, whatever the process count (one process reads in order: no copy then)
        order = np.argsort(out["indices"], kind="stable")
        if np.any(order != np.arange(len(order))):
            out = {k: v[order] for k, v in out.items()}
    return out
