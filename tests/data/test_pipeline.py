import dataclasses
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from ssm_jax.data import get_source, make_pipeline
from ssm_jax.data.pipeline import batch_position, class_balanced

KW = dict(batch_size=4, image_size=8, shard_index=0, shard_count=1, num_threads=2, prefetch_buffer_size=4)


def _indices(it, n):
    return [next(it)["index"].tolist() for _ in range(n)]


@pytest.fixture
def folder(replica_root):
    return get_source("folder", os.path.join(replica_root, "folder"), "all")  # 9 examples


def test_batches_shapes_and_normalisation(replica_root):
    src = get_source("mvtec", os.path.join(replica_root, "mvtec"), "test")
    batch = next(iter(make_pipeline(src, **KW)))
    assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].dtype == np.float32
    assert batch["mask"].shape == (4, 8, 8, 1) and batch["label"].dtype == np.int32
    assert -2.2 < batch["image"].min() and batch["image"].max() < 2.7
    for i, m, y in zip(batch["index"], batch["mask"], batch["label"]):
        assert (m.sum() > 0) == bool(y) == bool(src[i].label)


def test_train_order_is_seeded_and_epochs_reshuffle(folder):
    a = _indices(iter(make_pipeline(folder, seed=1, **KW)), 6)
    assert a == _indices(iter(make_pipeline(folder, seed=1, **KW)), 6)
    assert a != _indices(iter(make_pipeline(folder, seed=2, **KW)), 6)
    epochs = make_pipeline(folder, seed=1, num_epochs=2, **KW)
    flat = sum(_indices(iter(epochs), 4), [])
    assert sorted(flat[:9]) == list(range(9)) and flat[:8] != flat[9:17] and len(list(iter(epochs))) == 4


def test_eval_reads_everything_once_in_order(folder):
    batches = list(make_pipeline(folder, train=False, **KW))
    assert [len(b["index"]) for b in batches] == [4, 4, 1]
    assert np.concatenate([b["index"] for b in batches]).tolist() == list(range(9))


def test_sharding_splits_the_data(folder):
    kw = {**KW, "batch_size": 1}
    seen = [sum(_indices(iter(make_pipeline(folder, train=False, **{**kw, "shard_index": i, "shard_count": 3})), 3), [])
            for i in range(3)]
    assert sorted(sum(seen, [])) == list(range(9)) and all(len(s) == 3 for s in seen)
    train = [set(sum(_indices(iter(make_pipeline(folder, num_epochs=1, **{**kw, "shard_index": i, "shard_count": 2})),
                              4), []))
             for i in range(2)]
    assert not train[0] & train[1] and len(train[0]) == len(train[1]) == 4


def test_iterator_state_resumes_at_the_same_batch(folder):
    augment = dict(flips=("horizontal", "vertical"), rot90=True, affine=(10.0, 0.1, 0.1))
    it = iter(make_pipeline(folder, seed=5, **augment, **KW))
    _indices(it, 3)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = iter(make_pipeline(folder, seed=5, **augment, **KW))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert all(np.array_equal(got[k], want[k]) for k in want)


def test_flips_move_image_and_mask_together(replica_root):
    src = get_source("mvtec", os.path.join(replica_root, "mvtec"), "test", categories="bottle")
    plain = {b: x for x, b in _pairs(make_pipeline(src, train=False, **{**KW, "image_size": 16}))}
    flipped = list(_pairs(make_pipeline(src, flips=("horizontal",), num_epochs=3, **{**KW, "image_size": 16})))
    n_flipped = 0
    for (img, mask), idx in flipped:
        ref_img, ref_mask = plain[idx]
        same = np.array_equal(img, ref_img)
        n_flipped += not same
        assert np.array_equal(img, ref_img if same else ref_img[:, ::-1])
        assert np.array_equal(mask, ref_mask if same else ref_mask[:, ::-1])
    assert 0 < n_flipped < len(flipped)


def test_rot90_and_affine_preserve_labels_order_and_other_draws(replica_root):
    src = get_source("mvtec", os.path.join(replica_root, "mvtec"), "test", categories="bottle")
    kw = {**KW, "image_size": 16, "flips": ("horizontal",), "num_epochs": 2, "seed": 3}
    flipped = list(make_pipeline(src, **kw))
    rotated = list(make_pipeline(src, rot90=True, **kw))
    warped = list(make_pipeline(src, affine=(8.0, 0.1, 0.1), **kw))
    ks = set()
    for a, r, w in zip(flipped, rotated, warped):
        for key in ("index", "label", "has_mask"):
            assert np.array_equal(a[key], r[key]) and np.array_equal(a[key], w[key]), key
        for key in ("image", "mask"):
            assert a[key].shape == r[key].shape == w[key].shape and a[key].dtype == r[key].dtype == w[key].dtype
        for img, mask, r_img, r_mask in zip(a["image"], a["mask"], r["image"], r["mask"]):
            k = next(k for k in range(4) if np.array_equal(r_img, np.rot90(img, k)))  # the same flip, then rot90
            assert np.array_equal(r_mask, np.rot90(mask, k))
            ks.add(k)
        assert set(np.unique(w["mask"])) <= {0.0, 1.0} and not np.array_equal(w["image"], a["image"])
    assert ks == {0, 1, 2, 3}
    again = list(make_pipeline(src, affine=(8.0, 0.1, 0.1), **kw))
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(warped, again))  # same seed, same batches


def _pairs(ds):
    for b in ds:
        for img, mask, idx in zip(b["image"], b["mask"], b["index"]):
            yield (img, mask), int(idx)


@pytest.mark.parametrize("class_balance", [pytest.param(0.0, marks=pytest.mark.slow), 0.5])  # ~18 s each
def test_training_batches_are_the_same_with_any_worker_count(folder, class_balance):
    """Each worker makes whole batches of the one shuffled, augmented stream: a seed gives the same run with 0, 2 or
    3 workers (grain's per-worker batching grouped the examples by worker count)."""
    kw = {**KW, "batch_size": 2, "seed": 3, "flips": ("horizontal",), "rot90": True, "class_balance": class_balance}
    serial = iter(make_pipeline(folder, **kw))
    want = [next(serial) for _ in range(6)]
    for workers in (2, 3):
        it = iter(make_pipeline(folder, **{**kw, "num_workers": workers}))
        for w in want:
            got = next(it)
            assert all(np.array_equal(got[k], w[k]) for k in w), (workers, got["index"], w["index"])
        it.close()


@pytest.mark.parametrize("saved_with,resumed_with", [(2, 0), (0, 3), pytest.param(2, 3, marks=pytest.mark.slow)])
def test_training_resumes_with_another_worker_count(folder, saved_with, resumed_with):
    kw = {**KW, "batch_size": 2, "seed": 3}
    it = iter(make_pipeline(folder, **{**kw, "num_workers": saved_with}))
    _indices(it, 2)
    state = it.get_state()
    assert state == {"next_batch": 2, "batch_size": 2, "examples": len(folder)}
    rest = _indices(it, 3)
    it.close()
    with pytest.raises(StopIteration):  # closed: its workers are not started again
        next(it)
    resumed = iter(make_pipeline(folder, **{**kw, "num_workers": resumed_with}))
    resumed.set_state(state)
    assert _indices(resumed, 3) == rest
    resumed.close()


@pytest.mark.parametrize("class_balance", [0.0, 0.5])
def test_training_batches_are_the_same_with_any_process_count(folder, class_balance):
    """Process p of P makes its part of every global batch of the run's one stream: the parts, side by side, are the
    batches of a single process, augmentations included; the position is a global batch, so a run resumes on
    another number of processes where it stopped; and a finite run gives every process as many batches."""
    kw = {**KW, "seed": 3, "flips": ("horizontal",), "rot90": True, "class_balance": class_balance}
    alone = iter(make_pipeline(folder, **{**kw, "batch_size": 6}))
    want = [next(alone) for _ in range(4)]
    for count in (2, 3):
        parts = [iter(make_pipeline(folder, **{**kw, "batch_size": 6 // count, "shard_index": p, "shard_count": count}))
                 for p in range(count)]
        for w in want:
            got = [next(it) for it in parts]
            assert all(np.array_equal(np.concatenate([g[k] for g in got]), w[k]) for k in w), count
        assert parts[1].get_state() == {"next_batch": 4, "batch_size": 6, "examples": len(folder)}
    resumed = iter(make_pipeline(folder, **{**kw, "batch_size": 2, "shard_index": 1, "shard_count": 3}))
    resumed.set_state({"next_batch": 2, "batch_size": 6, "examples": len(folder)})  # saved by 2 processes, or 1
    assert np.array_equal(next(resumed)["index"], want[2]["index"][2:4])
    finite = [list(make_pipeline(folder, **{**kw, "batch_size": 2, "num_epochs": 3, "shard_index": p,
                                            "shard_count": 2})) for p in range(2)]
    assert len(finite[0]) == len(finite[1]) == 3 * len(folder) // 4  # 27 examples: 6 whole global batches of 4


def test_batch_position_reads_the_grain_states_of_older_checkpoints():
    assert batch_position({"next_batch": 7}, 4) == 7
    assert batch_position({"next_batch": 7, "batch_size": 4}, 4) == 7
    with pytest.warns(UserWarning, match="written with batches of 8 examples, resumed with 4: training "
                                         "goes on from example 56"):
        assert batch_position({"next_batch": 7, "batch_size": 8}, 4) == 14
    with pytest.warns(UserWarning, match="trained on 100 examples, this one has 90: is it the same data"):
        assert batch_position({"next_batch": 7, "batch_size": 4, "examples": 100}, 4, 90) == 7
    assert batch_position({"next_index": 24}, 8) == 3  # one process: examples handed out
    workers = {"iterators_in_use_indices": [0, 1], "iterators_in_use_states": [{"next_index": 16}, {"next_index": 8}]}
    with pytest.warns(UserWarning, match="earlier ssm_jax"):
        assert batch_position(workers, 8) == 3
    with pytest.raises(ValueError, match="not a training pipeline's position"):
        batch_position({"epoch": 2}, 8)


def test_default_shard_is_this_jax_process(folder):
    assert len(list(make_pipeline(folder, batch_size=3, train=False))) == 3  # one process: everything


def test_bad_arguments(folder):
    with pytest.raises(ValueError, match="unknown flips"):
        make_pipeline(folder, batch_size=2, flips=("diagonal",))
    with pytest.raises(ValueError, match="rot90='yes'"):
        make_pipeline(folder, batch_size=2, rot90="yes")
    with pytest.raises(ValueError, match=r"affine=\(1, 2\)"):
        make_pipeline(folder, batch_size=2, affine=(1, 2))
    with pytest.raises(ValueError, match="shard_index"):
        make_pipeline(folder, batch_size=2, shard_index=3, shard_count=3)


def test_eval_with_worker_processes_gives_full_batches_in_order(folder):
    """Workers decode, the main process batches: the same batches as without workers (an evaluation loop that
    counts full batches would otherwise miss examples)."""
    batches = list(make_pipeline(folder, train=False, **{**KW, "num_workers": 2}))
    assert [len(b["index"]) for b in batches] == [4, 4, 1]
    assert np.concatenate([b["index"] for b in batches]).tolist() == list(range(9))


_READ_WITH_WORKERS = """
import os, signal, sys
from ssm_jax.data import get_source, make_pipeline

stop = []


def read(train):
    src = get_source("folder", sys.argv[1], "all")
    it = iter(make_pipeline(src, batch_size=2, image_size=64, train=train, num_workers=2, num_threads=2))
    batches = [next(it) for _ in range(4)]
    if sys.argv[2] != "to_the_end":  # as a scheduler or Ctrl-C stop a job: a signal to the process group
        signum = getattr(signal, sys.argv[2])
        signal.signal(signum, lambda *_: stop.append(1))
        os.killpg(0, signum)
        while not stop:
            batches.append(next(it))
    return len(batches)


if __name__ == "__main__":
    print(read(True) >= 4, read(False) >= 4)
"""


# ~15 s each. By default SIGTERM alone: a script that ends normally is checked by
# test_a_script_that_holds_iterators_and_batches_exits_quietly.
@pytest.mark.parametrize("how", [pytest.param("to_the_end", marks=pytest.mark.slow), "SIGTERM",
                                 pytest.param("SIGINT", marks=pytest.mark.slow)])
def test_worker_batches_leave_no_shared_memory_at_exit(replica_root, how):
    """A process that read batches from worker processes exits without the resource tracker's "leaked
    shared_memory objects" warning: grain's queued unlinks are finished at exit, and the workers leave a SIGTERM or
    SIGINT sent to the whole process group to the main process, which stops them cleanly."""
    run = subprocess.run([sys.executable, "-c", _READ_WITH_WORKERS, os.path.join(replica_root, "folder"), how],
                         capture_output=True, text=True, timeout=300, start_new_session=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "True"]
    assert "leaked shared_memory" not in run.stderr, run.stderr


def _shares(power, counts):
    """The reference: class c's share of the draws, n_c ** (1 - power) normalised, in float64."""
    weights = np.asarray(counts, np.float64) ** (1.0 - power)
    return weights / weights.sum()


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_class_balanced_draws_classes_in_their_shares(power):
    counts = (90, 9, 1)
    labels = np.repeat(np.arange(3), counts)
    indices = np.arange(100, 200)  # source positions, not 0..99, so the stream is checked to return them
    stream = class_balanced(indices, labels, power, seed=7)
    drawn = np.array([stream[i] for i in range(3000)])
    seen = np.bincount(labels[drawn - 100], minlength=3) / len(drawn)
    np.testing.assert_allclose(seen, _shares(power, counts), atol=2e-3)  # a fixed interleave: within a draw or so


def test_class_balanced_passes_over_each_class_reshuffled():
    labels = np.repeat(np.arange(2), (6, 4))
    stream = class_balanced(np.arange(10), labels, 1.0, seed=0)
    rare = [i for i in (stream[k] for k in range(40)) if labels[i] == 1]
    passes = [rare[j:j + 4] for j in range(0, 16, 4)]
    assert all(sorted(p) == [6, 7, 8, 9] for p in passes)  # every example once a pass
    assert len({tuple(p) for p in passes}) > 1  # and a new order for a new pass
    again = class_balanced(np.arange(10), labels, 1.0, seed=0)
    other = class_balanced(np.arange(10), labels, 1.0, seed=1)
    assert [again[k] for k in range(40)] == [stream[k] for k in range(40)] != [other[k] for k in range(40)]


_HOLD_AT_EXIT = """
import sys
from ssm_jax.data import get_source, make_pipeline

if __name__ == "__main__":  # a prototyping script: iterators left open and batches kept in globals at exit
    src = get_source("folder", sys.argv[1], "all")
    kept = []
    for workers in (0, 2):
        for train in (True, False):
            it = iter(make_pipeline(src, batch_size=2, image_size=64, train=train, num_workers=workers, num_threads=2))
            kept.append((it, next(it)))
    print(len(kept))
"""


def test_a_script_that_holds_iterators_and_batches_exits_quietly(replica_root):
    """Left open, grain's iterators and its workers' shared-memory batches would be finalised after their modules
    are torn down: a traceback each and the resource tracker's leak warning. They are closed and unlinked at exit."""
    run = subprocess.run([sys.executable, "-c", _HOLD_AT_EXIT, os.path.join(replica_root, "folder")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.split() == ["4"], run.stderr
    assert "Exception ignored" not in run.stderr and "leaked" not in run.stderr, run.stderr


_PASS_TO_THE_END = """
import atexit, gc, os, sys


def still_linked():  # registered first, so it runs after every other exit handler
    import grain
    arrays = [o for o in gc.get_objects() if isinstance(o, grain.multiprocessing.SharedMemoryArray)]
    print(sum(os.path.exists("/dev/shm/" + a.shm.name.lstrip("/")) for a in arrays), flush=True)


atexit.register(still_linked)
from ssm_jax.data import get_source, make_pipeline

if __name__ == "__main__":  # as eval.py: passes read to the end with workers
    src = get_source("folder", sys.argv[1], "all")
    for _ in range(2):
        batches = list(make_pipeline(src, batch_size=2, image_size=64, train=False, num_workers=2, num_threads=2))
    print(len(batches) > 0, flush=True)
"""


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="reads POSIX shared memory's folder, /dev/shm")
def test_passes_read_to_the_end_leave_no_shared_memory_at_exit(replica_root):
    """Once the exit handlers have run, no worker example's shared memory is left linked: neither the examples that
    grain's prefetch threads keep in a reference cycle (the StopIteration that ends a pass holds each thread's last
    one) nor a last batch of one example that the script still holds (a view of its worker's shared memory). Left
    to the interpreter's teardown they printed "Exception ignored" tracebacks and the resource tracker's leak
    warning."""
    run = subprocess.run([sys.executable, "-c", _PASS_TO_THE_END, os.path.join(replica_root, "folder")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "0"], run.stdout + run.stderr


_STOPPED_WITH_WORKERS = """
import multiprocessing, os, signal, sys
from ssm_jax.data import get_source, make_pipeline
from ssm_jax.training.preemption import StopSignal, raise_on_sigterm

if __name__ == "__main__":  # as eval.py: an evaluation pass with workers, stopped (SIGTERM) or killed midway
    raise_on_sigterm()
    batches = iter(make_pipeline(get_source("folder", sys.argv[1], "all"), batch_size=2, image_size=64, train=False,
                                 num_workers=2, num_threads=2))
    next(batches)
    print(*[p.pid for p in multiprocessing.active_children() if p.name.startswith("grain")], flush=True)
    try:
        os.kill(os.getpid(), getattr(signal, sys.argv[2]))
        for batch in batches:
            pass
    except StopSignal:
        print("stopped", flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the workers' states from /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_workers_end_with_a_stopped_or_killed_evaluation(replica_root, how):
    """Workers ignore the stop signals (the main process stops them), so a main process that SIGTERM ended at once
    outside the training loop left them running forever. Now SIGTERM unwinds it (``raise_on_sigterm``), and
    workers whose main process was killed exit by themselves."""
    run = subprocess.run([sys.executable, "-c", _STOPPED_WITH_WORKERS, os.path.join(replica_root, "folder"), how],
                         capture_output=True, text=True, timeout=120)  # left running, workers hold its pipes open
    workers = [int(pid) for pid in run.stdout.split()[:2]]
    assert len(workers) == 2, run.stdout + run.stderr
    if how == "SIGTERM":
        assert run.returncode == 0 and run.stdout.split()[2:] == ["stopped"], run.stderr
    deadline = time.time() + 10
    while any(map(_alive, workers)) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(map(_alive, workers)), (how, [w for w in workers if _alive(w)])


@pytest.fixture
def imbalanced(folder):
    """21 examples: the folder replica's first class 6 times over (18), two of the second, one of the third."""
    by_class = [[r for r in folder.records if r.label == c] for c in range(3)]
    return dataclasses.replace(folder, records=by_class[0] * 6 + by_class[1][:2] + by_class[2][:1])


def test_class_balance_in_the_pipeline_evens_the_classes_and_resumes(imbalanced):
    kw = {**KW, "batch_size": 3, "seed": 2, "class_balance": 1.0}
    labels = imbalanced.labels
    it = iter(make_pipeline(imbalanced, **kw))
    drawn = sum(_indices(it, 10), [])
    assert np.bincount(labels[drawn], minlength=3).tolist() == [10, 10, 10]  # 18 / 2 / 1 in the source
    state = it.get_state()
    rest = _indices(it, 3)
    resumed = iter(make_pipeline(imbalanced, **kw))
    resumed.set_state(state)
    assert _indices(resumed, 3) == rest
    epochs = list(iter(make_pipeline(imbalanced, **{**kw, "num_epochs": 2})))
    assert len(epochs) == 2 * 21 // 3  # an epoch is still len(source) examples
    plain = sum(_indices(iter(make_pipeline(imbalanced, **{**kw, "class_balance": 0.0})), 7), [])
    assert sorted(plain) == list(range(21))  # off: one shuffled pass an epoch, as before


def test_class_balance_bad_values(folder, replica_root):
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"class_balance={bad}; expected a number in \[0, 1\]"):
            make_pipeline(folder, batch_size=2, class_balance=bad)
    anomaly = get_source("mvtec", os.path.join(replica_root, "mvtec"), "train")
    with pytest.raises(ValueError, match="class_balance > 0 needs a classification source"):
        make_pipeline(anomaly, batch_size=2, class_balance=0.5)
