"""Training pipelines' decoded-image cache (each image decoded once, batches unchanged) and batch prefetching."""

import collections
import dataclasses
import os
import threading
import time

import numpy as np
import pytest

from ssm_jax.data import get_source, make_pipeline
from ssm_jax.data.common import Source
from ssm_jax.data.pipeline import decoded_bytes

# One prefetch thread: with more, an image at the end of one epoch and the start of the next can be in flight twice
# at once and decoded twice (harmless, but it would make the counts below flaky).
KW = dict(batch_size=4, image_size=8, shard_index=0, shard_count=1, num_threads=1, prefetch_buffer_size=4)


@dataclasses.dataclass
class CountingSource(Source):
    """A source that counts how often each record is decoded (prefetch threads call ``load`` concurrently)."""

    loads: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def load(self, record, size=None):
        with self.lock:
            self.loads[record.path] += 1
        return super().load(record, size)


def _counting(replica_root, name, **kw):
    src = get_source(name, os.path.join(replica_root, name), "all" if name == "folder" else "test", **kw)
    return CountingSource(src.records, src.class_names, task=src.task)


def _take_from(it, n):
    return [next(it) for _ in range(n)]


def _take(pipeline, n):
    return _take_from(iter(pipeline), n)


def test_each_image_is_decoded_once_over_epochs_with_the_same_batches(replica_root):
    # A fresh source per pipeline: an iterator left behind keeps prefetching into its own source's counts.
    cached_src, plain_src = (_counting(replica_root, "mvtec", categories="bottle") for _ in range(2))
    n = 3 * len(cached_src) // KW["batch_size"]  # three epochs
    cached = _take(make_pipeline(cached_src, seed=4, flips=("horizontal", "vertical"), **KW), n)
    plain = _take(make_pipeline(plain_src, seed=4, flips=("horizontal", "vertical"), cache_bytes=0, **KW), n)
    assert sorted(cached_src.loads.values()) == [1] * len(cached_src)
    assert min(plain_src.loads.values()) >= 2  # without the cache every epoch decodes again
    for a, b in zip(cached, plain):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            assert a[key].dtype == b[key].dtype, key


def test_no_cache_when_it_does_not_fit_or_data_is_read_once(replica_root):
    too_small, fits, evaluated = (_counting(replica_root, "folder") for _ in range(3))
    size = decoded_bytes(len(fits), KW["image_size"], fits.task)
    assert size == len(fits) * 8 * 8 * 3
    two_epochs = 2 * len(fits) // KW["batch_size"] + 1
    _take(make_pipeline(too_small, cache_bytes=size - 1, **KW), two_epochs)
    _take(make_pipeline(fits, cache_bytes=size, **KW), two_epochs)
    assert max(too_small.loads.values()) >= 2 and max(fits.loads.values()) == 1
    for _ in range(2):  # evaluation pipelines are built per pass: nothing is kept between them
        list(make_pipeline(evaluated, train=False, cache_bytes=size, **KW))
    assert sorted(evaluated.loads.values()) == [2] * len(evaluated)


def test_worker_processes_give_the_same_batches_cached_or_not(replica_root):
    src = get_source("folder", os.path.join(replica_root, "folder"), "all")  # picklable for the workers
    size = decoded_bytes(len(src), KW["image_size"], src.task)
    kw = {**KW, "num_workers": 2, "num_threads": 2}
    a = _take(make_pipeline(src, cache_bytes=2 * size, **kw), 4)
    b = _take(make_pipeline(src, cache_bytes=0, **kw), 4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])


def test_negative_cache_or_prefetch_size_is_refused(replica_root):
    src = _counting(replica_root, "folder")
    with pytest.raises(ValueError, match=r"cache_bytes=-1; expected >= 0"):
        make_pipeline(src, cache_bytes=-1, **KW)
    with pytest.raises(ValueError, match=r"prefetch_batches=-2; expected >= 0"):
        make_pipeline(src, prefetch_batches=-2, **KW)


@pytest.mark.parametrize("prefetch_batches", [0, 3])
def test_batches_made_ahead_do_not_move_the_saved_position(replica_root, prefetch_batches):
    src = get_source("folder", os.path.join(replica_root, "folder"), "all")
    kw = {**KW, "seed": 5, "flips": ("horizontal",), "prefetch_batches": prefetch_batches}
    it = iter(make_pipeline(src, **kw))
    _take_from(it, 3)
    time.sleep(0.2)  # let the background thread run ahead
    state = it.get_state()
    expected = _take_from(it, 4)
    resumed = iter(make_pipeline(src, **kw))
    resumed.set_state(state)
    for want, got in zip(expected, _take_from(resumed, 4)):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
