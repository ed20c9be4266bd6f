"""Threads sharing one device (lavapipe in CI): concurrent kgen.attention calls, one Plan used
from several threads, close() racing calls, and use after close.

Every test joins its threads with a deadline and asserts that they finished, so a deadlock
fails the test (with every thread's stack on stderr) instead of hanging the run.
"""
from __future__ import annotations

import faulthandler
import sys
import threading

import numpy as np
import pytest

import kgen
from kgen import abi, reference
from kgen.compile import compile_source
from kgen.quant import roundtrip
from kgen.runtime import ClosedError
from kgen.runtime.context import Device

NMSE_MAX = 5e-4
JOIN_S = 60.0   # far above what the threads need on lavapipe; reaching it means a deadlock

# out[i] = 2 * x[i] + i: exact in float32, so a launch that ran with another thread's buffers,
# or not at all, shows as a mismatch.
TWICE_PLUS_INDEX = """#version 450
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 5) writeonly buffer O { float o[]; };
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < 4096u) {
        o[i] = 2.0 * x[i] + float(i);
    }
}
"""
N = 4096


def run_threads(*targets) -> None:
    """Start one thread per target at once, join them all by JOIN_S and re-raise the first
    failure; a thread still alive then fails the test as a deadlock."""
    start = threading.Barrier(len(targets))
    failures: list[BaseException] = []

    def body(target):
        try:
            start.wait(JOIN_S)
            target()
        except BaseException as exc:  # reported in the main thread
            failures.append(exc)

    threads = [threading.Thread(target=body, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    assert not stuck, f"threads {stuck} still running after {JOIN_S} s: a deadlock"
    if failures:
        raise failures[0]


def inputs(seed: int, *, b=1, hq=2, hkv=1, nq=8, nkv=48, d=64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((b, hq, nq, d), dtype=np.float32),
            rng.standard_normal((b, hkv, nkv, d), dtype=np.float32),
            rng.standard_normal((b, hkv, nkv, d), dtype=np.float32))


def assert_close(out, q, k, v, **kw) -> None:
    ref = reference.attention(q, roundtrip(k, "f16"), roundtrip(v, "f16"), **kw)
    assert out.shape == ref.shape and np.isfinite(out).all()
    err = reference.nmse(out, ref)
    assert err <= NMSE_MAX, f"NMSE {err:.3g} > {NMSE_MAX}"


@pytest.fixture(scope="module")
def own_device(cache_root):
    """A private Device, so that closing it cannot disturb the shared one of other tests."""
    with Device() as dev:
        yield dev


# --- the shared device ---------------------------------------------------------------------------

def test_attention_from_four_threads_with_different_shapes(cache_root) -> None:
    def calls(worker: int):
        def body():
            for i, (nq, nkv, causal) in enumerate([(8, 48, False), (3, 70, True), (16, 33, False)]):
                q, k, v = inputs(10 * worker + i, hq=2 * (worker % 2 + 1), nq=nq + worker, nkv=nkv + worker)
                assert_close(kgen.attention(q, k, v, causal=causal), q, k, v, causal=causal)
        return body
    run_threads(*(calls(w) for w in range(4)))


def test_one_plan_from_three_threads(cache_root) -> None:
    q0, k0, v0 = inputs(0)
    with kgen.plan(q0, k0, v0) as plan:
        def calls(worker: int):
            def body():
                for i in range(4):
                    q, k, v = inputs(100 * worker + i)   # this thread's own data, every call
                    assert_close(plan(q, k, v), q, k, v)
            return body
        run_threads(*(calls(w) for w in range(3)))


def calls_until_closed(plan, worker: int, called: threading.Event, outcomes: list[str]):
    """A thread body calling `plan` until it is closed: appends "closed", or "finished" after 200
    calls; every call that returned is checked (it ran whole) and sets `called`."""
    def body():
        for i in range(200):
            q, k, v = inputs(1000 * worker + i)
            try:
                out = plan(q, k, v)
            except ClosedError:
                outcomes.append("closed")
                return
            assert_close(out, q, k, v)
            called.set()
        outcomes.append("finished")
    return body


def test_close_while_other_threads_call(cache_root) -> None:
    q0, k0, v0 = inputs(0)
    plan = kgen.plan(q0, k0, v0)
    called = threading.Event()
    outcomes: list[str] = []

    def closer():
        assert called.wait(JOIN_S)
        plan.close()

    run_threads(*(calls_until_closed(plan, w, called, outcomes) for w in range(3)), closer)
    assert outcomes.count("closed") == 3, outcomes


def test_use_after_close_raises_the_closed_error(cache_root) -> None:
    q, k, v = inputs(3)
    plan = kgen.plan(q, k, v)
    assert_close(plan(q, k, v), q, k, v)
    plan.close()
    plan.close()   # twice: harmless
    for use in (lambda: plan(q, k, v), lambda: plan.upload(q, k, v), plan.run_device, plan.result):
        with pytest.raises(ClosedError, match="is closed"):
            use()


# --- a private device ----------------------------------------------------------------------------

def test_one_shot_launches_from_four_threads(own_device) -> None:
    dev = own_device
    kernel = dev.pipeline(compile_source(TWICE_PLUS_INDEX, name="twice_plus_index").spirv, name="twice_plus_index")

    def launches(worker: int):
        def body():
            with dev.buffer(4 * N) as x, dev.buffer(4 * N) as o:
                for i in range(20):
                    data = np.full(N, 1000.0 * worker + i, np.float32)
                    x.write(data)
                    kernel({0: x, 5: o}, abi.pack_some(), (N // 64, 1, 1))
                    got = np.frombuffer(o.read(), np.float32)
                    np.testing.assert_array_equal(got, 2 * data + np.arange(N, dtype=np.float32))
        return body
    run_threads(*(launches(w) for w in range(4)))


def test_buffer_access_beside_another_threads_sequences(own_device) -> None:
    """One thread makes, runs without waiting and closes sequences while another reads and
    writes its own buffer: neither waits on the other's fences."""
    dev = own_device
    kernel = dev.pipeline(compile_source(TWICE_PLUS_INDEX, name="twice_plus_index").spirv, name="twice_plus_index")
    x, o, mine = dev.buffer(4 * N), dev.buffer(4 * N), dev.buffer(4 * N)
    x.write(np.ones(N, np.float32))
    want = 2 + np.arange(N, dtype=np.float32)

    def sequences():
        for _ in range(40):
            with dev.sequence([(kernel, {0: x, 5: o}, abi.pack_some(), (N // 64, 1, 1))], timed=False) as seq:
                seq.run(wait=False)
            np.testing.assert_array_equal(np.frombuffer(o.read(), np.float32), want)

    def buffer_traffic():
        for i in range(400):
            mine.write(np.full(N, i, np.float32))
            assert np.frombuffer(mine.read(16), np.float32)[0] == i

    try:
        run_threads(sequences, buffer_traffic)
    finally:
        for b in (x, o, mine):
            b.close()


def test_buffer_closed_while_other_threads_launch_and_run_it(own_device) -> None:
    """A buffer closed in one thread while others launch kernels and run a sequence on it: they
    stop with ClosedError, and its memory is freed only after the GPU is done with it."""
    dev = own_device
    kernel = dev.pipeline(compile_source(TWICE_PLUS_INDEX, name="twice_plus_index").spirv, name="twice_plus_index")
    x, o = dev.buffer(4 * N), dev.buffer(4 * N)
    x.write(np.ones(N, np.float32))
    seq = dev.sequence([(kernel, {0: x, 5: o}, abi.pack_some(), (N // 64, 1, 1))])
    launched = threading.Event()
    stopped: list[str] = []

    def until_closed(use):
        def body():
            with pytest.raises(ClosedError, match="closed"):
                for _ in range(100_000):
                    use()
                    launched.set()
            stopped.append(use.__name__)
        return body

    def launch():
        kernel({0: x, 5: o}, abi.pack_some(), (N // 64, 1, 1))

    def run_without_waiting():
        seq.run(wait=False)

    def closer():
        assert launched.wait(JOIN_S)
        o.close()

    try:
        run_threads(until_closed(launch), until_closed(run_without_waiting), closer)
        assert sorted(stopped) == ["launch", "run_without_waiting"]
    finally:
        seq.close()
        x.close()


def test_device_close_while_other_threads_call(cache_root) -> None:
    dev = Device()
    q0, k0, v0 = inputs(0)
    plans = [kgen.plan(q0, k0, v0, device=dev) for _ in range(2)]
    called = threading.Event()
    outcomes: list[str] = []

    def closer():
        assert called.wait(JOIN_S)
        dev.close()

    run_threads(*(calls_until_closed(p, w, called, outcomes) for w, p in enumerate(plans)), closer)
    assert outcomes == ["closed", "closed"], outcomes
    for plan in plans:
        plan.close()   # after the device: harmless
        with pytest.raises(ClosedError):
            plan(q0, k0, v0)
