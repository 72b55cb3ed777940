"""benchmarks/scan_tune.py times configs in interleaved rounds: each round calls every function once per batch, in
order, and the median over rounds keeps a slow spell in one round from deciding a config's time."""

import argparse
import time

import jax.numpy as jnp

from benchmarks import scan_tune
from benchmarks.scan import SMALL_SHAPES, forward_bytes, functions
from benchmarks.scan_tune import interleaved_ms, measure_shape


def recorder(name: str, log: list, sleep_s):
    """A function that logs its name and sleeps ``sleep_s(call index)`` seconds before returning an array."""
    def fn(x):
        time.sleep(sleep_s(sum(entry == name for entry in log)))
        log.append(name)
        return x + 1
    return fn


def test_each_round_times_every_function_once_in_order():
    log = []
    ms = interleaved_ms([recorder("a", log, lambda i: 0.04), recorder("b", log, lambda i: 0.0)], (jnp.zeros(3),),
                        calls=2, rounds=3)
    assert log == ["a", "a", "b", "b"] * 3
    assert ms[0] >= 40.0 and ms[1] < ms[0] - 20.0  # a's sleep is its own: the gap is wide of a loaded host's noise


def test_a_slow_spell_in_one_round_does_not_set_the_median():
    log = []
    spell = recorder("spell", log, lambda i: 0.1 if i < 2 else 0.0)  # the first round's batch of 2 calls is slow
    ms = interleaved_ms([spell], (jnp.zeros(3),), calls=2, rounds=3)
    assert ms[0] < 50.0  # the spell's 100 ms a call would set a mean; the median is the quick rounds'


def test_measure_shape_times_checks_and_reports_a_failing_config(monkeypatch):
    """The wiring on CPU, with the ``sequential`` scan standing in for the GPU kernel and one config that fails:
    each config gets a row in order, the working one its times and its check against ``chunked``, the other its
    error; the working one also its forward over the copy floor at the bandwidth given."""
    def fake_kernel_fns(config, order=None, sum_groups=False):
        if config["design"] == "broken":
            def fail(*args):
                raise ValueError("no such design")
            return fail, fail
        return functions("sequential", order, sum_groups)

    monkeypatch.setattr(scan_tune, "kernel_fns", fake_kernel_fns)
    args = argparse.Namespace(warmup_s=0.0, check=True, calls=2, rounds=3, forward_only=False)
    configs = [("seq", {"design": "sequential"}), ("broken", {"design": "broken"})]
    ok, broken = measure_shape(SMALL_SHAPES[4], "float32", configs, args, bandwidth=3e12)
    assert (ok["config"], ok["shape"], ok["dtype"]) == ("seq", "vmamba/small", "float32")
    assert ok["fwd_ms"] > 0 and ok["fwd_bwd_ms"] > 0
    floor_ms = 1e3 * forward_bytes(SMALL_SHAPES[4], jnp.float32) / 3e12
    assert abs(ok["fwd_floor"] - ok["fwd_ms"] / floor_ms) < 1e-9 * ok["fwd_floor"]
    assert ok["fwd_err"] < 1e-5 and ok["vjp_fwd_err"] < 1e-5 and ok["grad_err"] < 1e-4 and ok["finite"]
    assert broken["error"] == "ValueError: no such design" and "fwd_ms" not in broken


def test_forward_only_times_and_checks_the_forward_without_compiling_its_gradient(monkeypatch):
    """``--forward-only``: the forward's time and its y against ``chunked``; the gradient's function never runs."""
    ran = []

    def fake_kernel_fns(config, order=None, sum_groups=False):
        forward, _ = functions("sequential", order, sum_groups)

        def forward_backward(*args):
            ran.append("gradient")
        return forward, forward_backward

    monkeypatch.setattr(scan_tune, "kernel_fns", fake_kernel_fns)
    args = argparse.Namespace(warmup_s=0.0, check=True, calls=2, rounds=3, forward_only=True)
    (row,) = measure_shape(SMALL_SHAPES[4], "float32", [("seq", {"design": "sequential"})], args, bandwidth=3e12)
    assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] != row["fwd_bwd_ms"]  # nan: not timed
    assert row["fwd_err"] < 1e-5 and row["finite"] and "grad_err" not in row and ran == []
