"""``benchmarks.scan.batched_time``: calls back to back, one wait on the last output, per-call seconds; and the copy
bandwidth timed with it."""

import jax.numpy as jnp

from benchmarks import scan


def test_calls_back_to_back_and_waits_once_on_the_last_output(monkeypatch):
    outputs, waited = [], []

    def fn(x):
        outputs.append(x + len(outputs))
        return outputs[-1]

    monkeypatch.setattr(scan.jax, "block_until_ready", lambda out: waited.append(out) or out)
    per_call = scan.batched_time(fn, jnp.zeros(3), calls=4, repeats=3)
    assert len(outputs) == 12 and per_call > 0
    assert [w is o for w, o in zip(waited, outputs[3::4])] == [True] * 3  # each batch waits on its last call only


def test_copy_bandwidth_is_timed_warm_and_back_to_back_like_the_kernels(monkeypatch):
    """The floor's copy is warmed up and timed in batches (``batched_time``), as the back-to-back rows it divides are,
    and counts bytes read and written."""
    seen = []

    def warm_up(fn, *args, calls, seconds):
        seen.append(("warm_up", seconds))

    def batched_time(fn, *args, calls, repeats):
        seen.append(("batched", calls))
        return 1e-3

    monkeypatch.setattr(scan, "warm_up", warm_up)
    monkeypatch.setattr(scan, "batched_time", batched_time)
    assert abs(scan.copy_bandwidth(4 * 1024, repeats=3) - 2 * 4 * 1024 / 1e-3) < 1e-6
    assert seen == [("warm_up", 1.0), ("batched", 10)]
