"""timing.warm_up runs until the clock probe says the GPU clock is back up."""
from types import SimpleNamespace

from kgen.timing import clocks
from kgen import timing


class FakeProbe:
    """Stands in for clocks.ClockProbe: the clock follows clock_at(batch index)."""
    def __init__(self, clock_at):
        self.clock_at, self.batches = clock_at, 0
        self.best_us = float("inf")

    def saw(self, us):
        self.best_us = min(self.best_us, us)


def fake(monkeypatch, device_type, per_run_us, clock_at):
    """Plans on a fake device; each batch runs at clock_at(i) of the full clock."""
    dev = SimpleNamespace(caps=SimpleNamespace(device_type=device_type))
    probe = FakeProbe(clock_at)
    monkeypatch.setattr(clocks, "probe_for", lambda d: probe)
    calls = []

    def batch(plans, runs, probe_, recorded):
        clock = clock_at(len(calls))
        calls.append(runs)
        times = [per_run_us / clock] * runs
        return times, (10.0 / clock if probe_ is not None else None)

    monkeypatch.setattr(timing, "_warm_batch", batch)
    return [SimpleNamespace(device=dev)], calls


def test_waits_for_the_clock_after_the_floor(monkeypatch):
    # The clock climbs from 20% to full over 6 batches and stays there.
    plans, calls = fake(monkeypatch, "discrete", 100.0, lambda i: min(1.0, 0.2 + 0.16 * i))
    monkeypatch.setattr(timing, "WARM_FIRST_US", 0)
    timing.warm_up(plans, 1.0)
    assert len(calls) == 7  # batch 5 reaches the full clock, batch 6 shows it stopped climbing


def test_later_warm_ups_compare_with_the_fastest_probe(monkeypatch):
    plans, calls = fake(monkeypatch, "discrete", 100.0, lambda i: 1.0)
    timing.warm_up(plans, 1.0)  # the first: at least WARM_FIRST_US, sets the reference
    first = len(calls)
    assert sum(100.0 * n for n in calls) >= timing.WARM_FIRST_US
    # Now the clock has dropped to a third and takes 4 batches to come back.
    clock = iter([1 / 3, 0.5, 0.7, 0.9, 1.0, 1.0, 1.0])
    monkeypatch.setattr(timing, "_warm_batch",
                        lambda p, runs, probe, recorded: (calls.append(runs) or [100.0] * runs, 10.0 / next(clock)))
    timing.warm_up(plans, 1.0)
    assert len(calls) - first == 6


def test_a_clock_that_is_already_up_needs_only_the_floor(monkeypatch):
    plans, calls = fake(monkeypatch, "discrete", 100.0, lambda i: 1.0)
    monkeypatch.setattr(timing, "WARM_FIRST_US", 0)
    spent = timing.warm_up(plans, 20_000)
    assert 20_000 <= spent < 20_000 + 2 * timing.WARM_BATCH_US


def test_gives_up_at_the_cap(monkeypatch):
    monkeypatch.setattr(timing, "WARM_MAX_US", 50_000)
    # Full clock once, then never again: warm-up stops at the cap, not forever.
    plans, calls = fake(monkeypatch, "discrete", 100.0, lambda i: 1.0 if i == 0 else 0.5)
    spent = timing.warm_up(plans, 1e9)
    assert 50_000 <= spent < 50_000 + 2 * timing.WARM_BATCH_US


def test_cpu_devices_only_wait_for_the_floor(monkeypatch):
    plans, calls = fake(monkeypatch, "cpu", 1000.0, lambda i: 1.0)
    spent = timing.warm_up(plans, 10_000)
    # 2 runs, then batches of 6 (5 ms at 1 ms a run) until 10 ms.
    assert calls == [2, 6, 6] and spent == 14_000



def test_a_batch_size_is_recorded_once_and_resubmitted(monkeypatch):
    """Recording a batch cost more than running it: warm-up keeps each size's recording, and
    takes a new size only when the per-run time says the batch is 2x off."""
    monkeypatch.setattr(timing, "WARM_FIRST_US", 0)
    recordings = []

    class Seq:
        def __init__(self, steps):
            self.steps, self.closed = steps, False
            recordings.append(self)

        def run(self, wait=True):
            return [100.0] * (len(self.steps) - 1) + [10.0]   # each run 100 us, then the probe

        def close(self):
            self.closed = True

    dev = SimpleNamespace(caps=SimpleNamespace(device_type="discrete"), sequence=Seq)
    monkeypatch.setattr(clocks, "probe_for", lambda d: SimpleNamespace(
        step="probe", best_us=10.0, saw=lambda us: None))
    plans = [SimpleNamespace(device=dev, steps=["run"])]
    spent = timing.warm_up(plans, 200_000)
    assert spent >= 200_000
    # The first batch (2 runs), then one size for the rest: 51 runs of 100 us, about 40 batches.
    assert [len(r.steps) - 1 for r in recordings] == [2, 51]
    assert all(r.closed for r in recordings)
