"""``benchmarks.scan.batched_time``: calls back to back, one wait on the last output, per-call seconds."""

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
