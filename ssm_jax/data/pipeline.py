"""grain input pipelines: source -> decode/resize -> shuffle -> repeat -> augment -> normalise -> batch -> share.

``make_pipeline`` returns an iterable (``Batches`` for training, ``ExampleBatches`` for evaluation); ``iter()`` of it
gives an iterator whose ``get_state()`` / ``set_state()`` save and restore the position, so a resumed run
continues at the same batch (store the state in the checkpoint). Batches are dicts of numpy arrays:

* ``image`` float32 (B, H, W, 3), NHWC, normalised with the ImageNet mean/std;
* ``label`` int32 (B,); ``index`` int64 (B,), the example's position in the source (look up
  ``source[index]`` for category / defect type / path);
* anomaly sources add ``mask`` float32 (B, H, W, 1) in {0, 1} and ``has_mask`` bool (B,), False for
  anomalous images without a pixel annotation (their ``mask`` is zeros and must not be scored).

Sharding: process ``shard_index`` of ``shard_count`` (default ``jax.process_index()/process_count()``), P in all.
Training draws one example stream for the whole run, whatever P: global batch k is the k-th ``batch_size`` x P examples
of it, and each process makes its own ``batch_size`` of them, so a run gives the same batches (and resumes at the same
one) on any number of processes. Training shuffles with ``seed`` and reshuffles every epoch, repeating ``num_epochs``
times (None: forever) and dropping the last partial global batch; evaluation reads every P-th example once, in order
(``training.gather`` puts them back in source order). Augmentations (``ssm_jax.data.augment``) run in a fixed order,
each only when asked for and each with its own seed (``seed`` + 1: flips, + 2: 90-degree rotations, + 3: affine), so
turning one on leaves the others' draws as they were. They act on the decoded uint8 pixels and the image is normalised
after them, so flips and rotations move a quarter of the bytes and the warp interpolates one channel of a grayscale
image rather than three normalised ones (``augment.warp_affine``): with the ELPV recipe's augmentations, 1.4 times the
images a second (``python -m benchmarks.input_pipeline --augment``, README). ``class_balance`` > 0 (training only) draws
the examples from one endless stream per class instead of one shuffled pass over all of them (``class_balanced``), so
the rare classes of a defect dataset are seen more often; an epoch stays ``len(source)`` examples. ``num_workers > 0``
decodes in that many worker processes (``mp_prefetch``). Training batch k is the k-th ``batch_size`` examples of the
shuffled stream whatever the worker count: each worker makes every ``num_workers``-th batch whole, so one seed gives the
same run with any ``num_workers``, and the saved position is a batch count that a run resumed with another worker count
reads back (``Batches``). Evaluation, and training with ``skip_corrupt`` (whose batches close over skipped examples),
decode single examples in the workers (or in ``num_threads`` threads of this process) and batch them here in order.
Without workers, training batches are made in up to ``prefetch_batches`` threads, ahead of ``next()``, which then
returns at once while the train step runs: batching 32 cached 64 px images in the training loop's thread took it 10-40
ms a step, 17-19 s of waiting over the ``:cpu`` ELPV run (its ``data_wait_s``), 4-6 s ahead of it.

Caching: a training pipeline that reads its data more than once keeps every decoded, resized image (uint8, and
masks as bool) in memory after its first read when they fit in ``cache_bytes`` per process (workers each hold their
own copy, so the estimate is multiplied by the worker count). Decoding and resizing the 300 px ELPV PNGs is
most of the pipeline's work, and repeating it every epoch took CPU from the train step: 360 images/s decoding vs
2,380 images/s from the cache, at 64 px on the 2-core machine with 8 threads (``python -m benchmarks.input_pipeline
--workers 0 --threads 8 --image-size 64``, 2026-11-23, machine shared); ELPV at 64 px is 24 MB. The cache changes
no result: every epoch yields the same arrays, in the same order and with the same flips, cached or not.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import os
import signal
import threading
import time
import warnings
import weakref
from typing import Sequence

import grain
import numpy as np

from ssm_jax.data.augment import FLIPS, RandomAffine, RandomFlips, RandomRot90, check_affine
from ssm_jax.data.common import ANOMALY, Source
from ssm_jax.data.images import CorruptImageError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 pixels (..., 3), or float32 ones on the same 0-255 scale (a warped image) -> float32, ImageNet mean/std:
    (x / 255 - mean) / std, computed in place on one copy."""
    out = image.astype(np.float32)
    out /= 255.0
    out -= IMAGENET_MEAN
    out /= IMAGENET_STD
    return out


def _normalize_image(ex: dict) -> dict:
    return {**ex, "image": normalize(ex["image"])}


_OPEN_ITERATORS = weakref.WeakSet()  # every pipeline iterator made, until freed
_HELD_BATCH_ARRAYS = weakref.WeakValueDictionary()  # id -> a worker batch's shared-memory array handed out


def _tidy_at_exit() -> None:
    """Closes the pipeline iterators still open and frees the worker batches' shared memory, while the modules
    that grain's finalisers need are still there.

    Batches from worker processes arrive in shared memory that grain unlinks on a thread pool when they are freed;
    at exit multiprocessing stops that pool with unlinks still queued, and Python's resource tracker then warns of
    "leaked shared_memory objects" (and removes them). A script that leaves an iterator open or keeps a batch in a
    global (an evaluation's last batch, of one example, is a view of a worker's shared memory) would also have
    grain's finalisers run after their module is torn down, each printing a traceback."""
    for iterator in list(_OPEN_ITERATORS):
        iterator.close()
    gc.collect()  # grain's prefetch threads end a pass on an exception whose traceback holds their last example
    cls = grain.multiprocessing.SharedMemoryArray
    pool = getattr(cls, "_del_thread_pool", None)  # grain's own attribute; absent in other versions: nothing to do
    if pool is not None:
        cls._del_thread_pool = None  # arrays freed from here on unlink at once
        pool.close()
        pool.join()
    held = {array.shm.name: array.shm for array in list(_HELD_BATCH_ARRAYS.values())}
    for shm in held.values():
        shm.unlink()  # the mapping stays valid until the process ends
    if held:
        cls.__del__ = _leave_mapped  # their finaliser would run after its module is gone


def _held(batch: dict) -> dict:
    """``batch``, its arrays in worker processes' shared memory noted, so that they are unlinked at exit if a script
    still holds them then."""
    for array in batch.values():
        if isinstance(array, grain.multiprocessing.SharedMemoryArray):
            _HELD_BATCH_ARRAYS[id(array)] = array
    return batch


def _leave_mapped(array) -> None:
    """``SharedMemoryArray``'s finaliser once its shared memory was unlinked at exit: the mapping ends with the
    process."""


def _register_tidy_at_exit() -> None:
    atexit.unregister(_tidy_at_exit)  # once however many pipelines; registered after multiprocessing's own exit
    atexit.register(_tidy_at_exit)  # handler (imported by grain), so it runs before that stops grain's pool


def _workers_ignore_stop_signals(worker_index: int, worker_count: int) -> None:
    """Worker processes ignore SIGTERM and SIGINT, which a scheduler, ``timeout`` or Ctrl-C send to the whole process
    group: the main process checkpoints (or unwinds), then grain stops them. Killed mid-batch they would leave that
    batch's shared memory to the resource tracker, with the same leak warning, and print a traceback each. (A
    worker imports the main module before this runs: train.py and eval.py ignore SIGINT first thing there, and a
    SIGTERM that kills a worker then is read by ``training.loop.train_loop`` as the stop.) A worker whose main
    process is gone (killed) exits: nothing else would stop it."""
    del worker_index, worker_count
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="exit-with-parent", daemon=True).start()


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


DEFAULT_CACHE_BYTES = 1 << 30
_CORRUPT = object()  # cached marker of a skipped file, so it is neither decoded nor warned about again


def decoded_bytes(num_examples: int, image_size: int, task: str) -> int:
    """Memory that ``num_examples`` cached examples take: 3 bytes per pixel, plus 1 for an anomaly mask."""
    return num_examples * image_size * image_size * (3 + (task == ANOMALY))


@dataclasses.dataclass
class Decode:
    """Loads ``source[index]`` at ``image_size``; returns None (skipped) for a corrupt file when
    ``skip_corrupt``, warning once per file with its path and the count of distinct files skipped in this process.
    With ``cache`` every decoded example is kept (compactly) after its first load and reused."""

    source: Source
    image_size: int
    skip_corrupt: bool = False
    cache: bool = False
    skipped: set = dataclasses.field(default_factory=set)  # indices of the files skipped
    _decoded: dict = dataclasses.field(default_factory=dict, repr=False)

    def _load(self, index: int):
        try:
            ex = self.source.load(self.source[index], self.image_size)
        except CorruptImageError as e:
            if not self.skip_corrupt:
                raise CorruptImageError(f"{e}; to go on without such files, set "
                                        f"--config.data.skip_corrupt=True (a stopped training run may resume with it)"
                                        ) from e
            if index not in self.skipped:  # read again each epoch: said once
                self.skipped.add(index)
                # Located here: the callers above are grain's threads and workers, not the user's code.
                warnings.warn(f"skip_corrupt: skipped {len(self.skipped)} corrupt image(s) so far; last: {e}")
            return _CORRUPT
        if "mask" in ex:
            ex["mask"] = ex["mask"] > 0  # {0, 1} float32 -> bool: a quarter of the memory, restored below
        return ex

    def __call__(self, index: int) -> dict | None:
        ex = self._decoded.get(index)
        if ex is None:
            ex = self._load(index)
            if self.cache:
                self._decoded[index] = ex  # dict assignment is atomic: prefetch threads may share this
        if ex is _CORRUPT:
            return None
        out = {"image": ex["image"], "label": np.int32(ex["label"]), "index": np.int64(index)}
        if self.source.task == ANOMALY:
            out["mask"] = ex["mask"][..., None].astype(np.float32)
            out["has_mask"] = np.bool_(ex["has_mask"])
        return out


def first_example(source: Source, image_size: int, skip_corrupt: bool = False) -> dict:
    """The first example of ``source`` that decodes, as an evaluation batch of one (normalised): the layout a process
    whose shard is exhausted, or was empty, pads with. Every process finds the same one."""
    decode = Decode(source, image_size, skip_corrupt)
    for index in range(len(source)):
        example = decode(index)
        if example is not None:
            return {k: np.asarray(v)[None] for k, v in _normalize_image(example).items()}
    raise CorruptImageError(f"none of the {len(source)} images to score decodes (skip_corrupt skipped them all)")


def class_balanced(indices: np.ndarray, labels: np.ndarray, power: float, seed: int) -> grain.MapDataset:
    """An endless stream of ``indices``: each class's examples shuffled, reshuffled at every pass over that class,
    and the classes interleaved in shares proportional to n_c ** (1 - ``power``), n_c the class's count. ``power``
    0 keeps the classes' own shares, 1 draws every class equally often, 0.5 in proportion to sqrt(n_c). The
    interleave is fixed (``grain.MapDataset.mix``), so every batch holds each class in its share, give or take one;
    class c's order is seeded with ``seed`` + 4 + c, after the augmentations' seeds."""
    classes, counts = np.unique(labels, return_counts=True)
    streams = [grain.MapDataset.source(indices[labels == c].tolist()).shuffle(seed=seed + 4 + int(c)).repeat()
               for c in classes]
    shares = counts.astype(np.float64) ** (1.0 - power)
    return grain.MapDataset.mix(streams, weights=(shares / shares.sum()).tolist())


def _process_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax

        return jax.process_index(), jax.process_count()
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    return shard_index, shard_count


def make_pipeline(source: Source, *, batch_size: int, image_size: int = 256, train: bool = True, seed: int = 0,
                  flips: Sequence[str] = (), rot90: bool = False, affine: Sequence[float] = (0.0, 0.0, 0.0),
                  num_epochs: int | None = None, shard_index: int | None = None,
                  shard_count: int | None = None, num_workers: int = 0, num_threads: int = 8,
                  prefetch_buffer_size: int = 64, skip_corrupt: bool = False,
                  cache_bytes: int = DEFAULT_CACHE_BYTES, prefetch_batches: int = 2,
                  class_balance: float = 0.0) -> Batches | ExampleBatches:
    """The pipeline of the module docstring; ``cache_bytes`` (0: never) bounds the decoded-image cache and
    ``prefetch_batches`` (0: none) the batches made ahead of ``next()``. ``rot90`` rotates by a random
    multiple of 90 degrees and ``affine`` = (max_degrees, max_scale, max_translate) warps slightly (zeros: off).
    ``class_balance`` in [0, 1] is ``class_balanced``'s power for training (0: off, one shuffled pass an epoch)."""
    unknown = [f for f in flips if f not in FLIPS]
    if unknown:
        raise ValueError(f"unknown flips {unknown}; expected some of {list(FLIPS)}")
    if not isinstance(rot90, (bool, np.bool_)):
        raise ValueError(f"rot90={rot90!r}; expected True or False")
    affine = check_affine(affine)
    if not 0.0 <= class_balance <= 1.0:
        raise ValueError(f"class_balance={class_balance!r}; expected a number in [0, 1] (0: off, 1: every class "
                         f"drawn equally often)")
    if class_balance and source.task == ANOMALY:
        raise ValueError("class_balance > 0 needs a classification source; anomaly training reads normal images "
                         "only, so there are no classes to balance")
    for name, value in (("cache_bytes", cache_bytes), ("prefetch_batches", prefetch_batches)):
        if value < 0:
            raise ValueError(f"{name}={value}; expected >= 0 (0 turns it off)")
    index, count = _process_shard(shard_index, shard_count)
    # Over source indices rather than MapDataset.source(source): the batch then carries each example's index.
    # Training: all of them in every process (its stream is the run's); an evaluation shard may be empty: that
    # process pads (training.gather).
    examples = np.arange(len(source)) if train else np.arange(len(source))[index::count]
    if len(examples) == 0 and train:
        raise ValueError("the training source has no examples")
    cached_bytes = decoded_bytes(len(examples), image_size, source.task) * max(1, num_workers)
    cache = train and num_epochs != 1 and cached_bytes <= cache_bytes  # evaluation reads each image once
    decode = Decode(source, image_size, skip_corrupt, cache)
    if train and class_balance:
        ds = class_balanced(examples, source.labels[examples], class_balance, seed).map(decode)
        if num_epochs is not None:
            ds = ds[: len(examples) * num_epochs]
    else:
        ds = grain.MapDataset.source(examples.tolist()).map(decode)
        if train:
            ds = ds.shuffle(seed=seed).repeat(num_epochs)
    if flips:
        ds = ds.random_map(RandomFlips(tuple(flips)), seed=seed + 1)
    if rot90:
        ds = ds.random_map(RandomRot90(), seed=seed + 2)
    if any(affine):
        ds = ds.random_map(RandomAffine(*affine), seed=seed + 3)
    ds = ds.map(_normalize_image)
    workers = _worker_options(num_workers)
    _register_tidy_at_exit()
    global_batch = batch_size * count if train else batch_size
    if train and not skip_corrupt:  # fixed batches of the example stream, whatever the worker and process counts
        if num_epochs is not None:
            ds = ds[: len(ds) // global_batch * global_batch]  # whole global batches: every process as many steps
        # this process's part of global batch k is the stream's (k P + index)-th run of batch_size examples
        return Batches(ds.batch(batch_size, drop_remainder=True)[index::count], global_batch, len(examples),
                       num_threads, prefetch_batches, workers)
    # Evaluation, or training that may skip examples: the workers decode single examples and this process batches
    # them in order, so every batch but the last is full (the evaluation loop counts full batches). Training's
    # share of the stream is then every P-th example.
    if train:
        ds = ds[index::count]
    ids = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size))
    if workers is not None:
        ids = ids.mp_prefetch(workers, _workers_ignore_stop_signals)
    ids = ids.batch(batch_size, drop_remainder=train)
    if prefetch_batches > 0 and workers is None:  # its iterator's state counts the batches handed out
        ids = grain.experimental.ThreadPrefetchIterDataset(ids, prefetch_buffer_size=prefetch_batches)
    return ExampleBatches(ids, global_batch, len(examples))


def _worker_options(num_workers: int) -> grain.MultiprocessingOptions | None:
    if num_workers <= 0:
        return None
    from absl import flags  # grain's workers read absl flags; outside an absl app they are unparsed

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return grain.MultiprocessingOptions(num_workers=num_workers)


class _PipelineIterator:
    """An iterator of ``make_pipeline``'s that holds grain's. ``close()`` stops it (and its workers) and lets go of
    grain's iterator, so that grain finalises it at once: at exit too, if a script left it open, rather than after
    grain's modules are torn down."""

    def __init__(self, iterator: grain.DatasetIterator | None):
        self._iterator, self._closed = iterator, False
        _OPEN_ITERATORS.add(self)

    def __iter__(self):
        return self

    def _release(self) -> None:
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

    def close(self) -> None:
        self._closed = True
        self._release()


@dataclasses.dataclass
class Batches:
    """Training batches: this process's part of global batch k (the k-th ``batch_size`` examples of the run's
    shuffled stream, over all processes), each made whole by one thread (up to ``num_threads``, at most
    ``prefetch_batches`` ahead) of this process or of a worker, of N workers each making every N-th batch: the
    same batches with any worker or process count, and a position that is one number, so a run resumes with
    another ``num_workers`` (a cluster node with other cores) or on more or fewer nodes and gets the same result."""

    batches: grain.MapDataset  # this process's parts, in order
    batch_size: int  # of a global batch
    examples: int  # in an epoch of the run's stream
    num_threads: int
    prefetch_batches: int
    workers: grain.MultiprocessingOptions | None

    def __iter__(self) -> "BatchIterator":
        return BatchIterator(self)

    def open(self, start: int) -> grain.DatasetIterator:
        threads = max(1, min(self.num_threads, self.prefetch_batches))
        ids = self.batches[start:].to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                                     prefetch_buffer_size=self.prefetch_batches))
        return iter(ids if self.workers is None else ids.mp_prefetch(self.workers, _workers_ignore_stop_signals))


class BatchIterator(_PipelineIterator):
    """Iterates ``Batches`` from batch ``next_batch``; ``get_state()`` / ``set_state()`` save and restore that one
    number (the loop keeps it in the checkpoint). Worker processes start at the first ``next()``, after a restore."""

    def __init__(self, batches: Batches):
        super().__init__(None)
        self._batches, self._next = batches, 0

    def __next__(self) -> dict:
        if self._closed:
            raise StopIteration
        if self._iterator is None:
            self._iterator = self._batches.open(self._next)
        batch = next(self._iterator)
        self._next += 1
        return _held(batch)

    def get_state(self) -> dict:
        return {"next_batch": self._next, "batch_size": self._batches.batch_size, "examples": self._batches.examples}

    def set_state(self, state: dict) -> None:
        self._release()  # reopened from the restored batch at the next next()
        self._next = batch_position(state, self._batches.batch_size, self._batches.examples)


def batch_position(state: dict, batch_size: int, examples: int | None = None) -> int:
    """The next batch that a saved data state names: this module's ``{"next_batch": k, "batch_size": b, "examples":
    n}`` (saved with another batch size: the batch holding example k b of the stream; saved over another number of
    training examples: the same batch; each with a warning), or the grain iterator state that checkpoints held before
    it (examples handed out: ``next_index`` of one process, or summed over the workers' states, whose batches were
    grouped differently: those resume at the same count, with a warning)."""
    if "examples" in state and examples is not None and int(state["examples"]) != examples:
        warnings.warn(f"this checkpoint's run trained on {state['examples']} examples, this one has "
                      f"{examples}: is it the same data? The shuffled order from here on is not the run's own",
                      stacklevel=2)
    if "next_batch" in state:
        saved = int(state.get("batch_size", batch_size))
        if saved != batch_size:
            warnings.warn(f"this checkpoint was written with batches of {saved} examples, resumed with "
                          f"{batch_size}: training goes on from example {int(state['next_batch']) * saved} of the "
                          f"data stream, with a learning-rate schedule and batches that differ from the run's "
                          f"own", stacklevel=2)
        return int(state["next_batch"]) * saved // batch_size
    if "next_index" in state:
        return int(state["next_index"]) // batch_size
    if "iterators_in_use_states" in state:
        warnings.warn("this checkpoint's data position was saved by an earlier ssm_jax, whose data workers grouped "
                      "examples into batches by worker count: resuming at the same number of batches, but the "
                      "examples of the rest of this epoch are not exactly those the run would have seen", stacklevel=2)
        return sum(int(s["next_index"]) for s in state["iterators_in_use_states"]) // batch_size
    raise ValueError(f"data state {str(state)[:200]!r} is not a training pipeline's position; expected "
                     f"{{'next_batch': k}} (was it saved with skip_corrupt, which the run must then keep?)")


@dataclasses.dataclass
class ExampleBatches:
    """Batches assembled here from single examples (evaluation, ``skip_corrupt`` training)."""

    dataset: grain.IterDataset
    batch_size: int  # of a global batch when training
    examples: int  # in an epoch of the run's stream when training, of this process's shard when evaluating

    def __iter__(self) -> "ExampleBatchIterator":
        return ExampleBatchIterator(self)


class ExampleBatchIterator(_PipelineIterator):
    """grain's iterator of ``ExampleBatches``, with its ``get_state()`` / ``set_state()``."""

    def __init__(self, batches: ExampleBatches):
        super().__init__(iter(batches.dataset))
        self._batches = batches

    def __next__(self) -> dict:
        if self._closed:
            raise StopIteration
        return _held(next(self._iterator))  # a batch of one example is a view of the worker's shared memory

    def get_state(self) -> dict:
        return self._iterator.get_state()

    def set_state(self, state: dict) -> None:
        """grain's state; or training's ``{"next_batch": k}`` (a run saved without ``skip_corrupt``, resumed with it
        after a corrupt file stopped it), reached by reading the first k batches again."""
        if "next_batch" not in state:
            self._iterator.set_state(state)
            return
        position = batch_position(state, self._batches.batch_size, self._batches.examples)
        warnings.warn(f"this checkpoint's data position was saved without skip_corrupt: reading its first "
                      f"{position} batches again to reach it", stacklevel=2)
        for _ in range(position):
            next(self._iterator)
