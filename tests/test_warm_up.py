"""planning.warm_up runs until the per-run time stops falling (GPU clocks coming up from idle)."""
from types import SimpleNamespace

from kgen import planning


def fake_plans(device_type="discrete"):
    dev = SimpleNamespace(caps=SimpleNamespace(device_type=device_type))
    return [SimpleNamespace(device=dev)]


def clock_ramp(monkeypatch, per_run_us):
    """time_back_to_back replaced by a GPU whose per-run time follows per_run_us(batch index)."""
    calls = []

    def timed(plans, runs):
        t = per_run_us(len(calls))
        calls.append(runs)
        return [t] * runs

    monkeypatch.setattr(planning, "time_back_to_back", timed)
    return calls


def test_runs_until_the_time_stops_falling(monkeypatch):
    # 100 us per run, halving for 5 batches (clocks ramping), then flat at ~3 us.
    calls = clock_ramp(monkeypatch, lambda i: max(100.0 / 2 ** i, 3.125))
    planning.warm_up(fake_plans(), 0)
    flat_from = 5  # batch 5 is the first at the floor
    assert len(calls) == flat_from + 1 + planning.WARM_STEADY


def test_stops_at_the_cap_when_times_keep_falling(monkeypatch):
    monkeypatch.setattr(planning, "WARM_MAX_US", 50_000)
    clock_ramp(monkeypatch, lambda i: 1000.0 * 0.97 ** i)  # never steady
    spent = planning.warm_up(fake_plans(), 0)
    assert 50_000 <= spent < 50_000 + 2 * planning.WARM_BATCH_US


def test_cpu_devices_only_wait_for_the_floor(monkeypatch):
    calls = clock_ramp(monkeypatch, lambda i: 1000.0)
    spent = planning.warm_up(fake_plans("cpu"), 10_000)
    # 2 runs, then batches of 6 (5 ms at 1 ms a run) until 10 ms: no settling batches after.
    assert calls == [2, 6, 6] and spent == 14_000
