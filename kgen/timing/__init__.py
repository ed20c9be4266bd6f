"""How kgen times kernels on a GPU: back to back in one submission, inputs rotated past the L2,
after a warm-up that waits for the clock (kgen.timing.clocks). The tuner, `kgen bench` and the
lab scripts all time through here, so one methodology gives every figure."""
from __future__ import annotations

import math
import statistics
from typing import Any, Protocol


class Timed(Protocol):
    """What is timed: a plan's recorded steps on its device (kgen.planning.plan.Plan)."""
    device: Any
    steps: list


# Inputs smaller than ROTATE_BELOW would sit in a GPU's L2 (50 MB on an H100) from one run to
# the next: timing then keeps several copies (separate plans sharing the one pipeline) and runs
# them in turn, enough to cover ROTATE_SPAN bytes.
ROTATE_BELOW = 64 << 20


ROTATE_SPAN = 256 << 20


ROTATE_MAX = 8


def rotation_sets(nbytes: int) -> int:
    """Input copies to run in turn so that no run reads what the previous one left in the L2."""
    if nbytes > ROTATE_BELOW:
        return 1
    return min(ROTATE_MAX, max(2, math.ceil(ROTATE_SPAN / max(nbytes, 1))))


def _run_steps(plans: list[Timed], runs: int) -> list:
    """The steps of `runs` runs, taking the plans in turn."""
    return [step for i in range(runs) for step in plans[i % len(plans)].steps]


def step_times(plans: list[Timed], runs: int, tail: tuple = ()) -> list[float]:
    """GPU microseconds of every step of `runs` runs recorded into one submission, taking the
    plans in turn, followed by those of the `tail` steps."""
    with plans[0].device.sequence(_run_steps(plans, runs) + list(tail)) as seq:
        return seq.run(wait=True)


def time_back_to_back(plans: list[Timed], runs: int) -> list[float]:
    """GPU microseconds of `runs` runs recorded into one submission, taking the plans in turn
    (separate buffers, so small inputs do not stay in L2 between runs). With no host round trip
    between runs the GPU never idles, so its clocks stay where a busy inference engine keeps
    them: timing run by run measured some kernels at a third of their speed on an H100."""
    if runs < 1:
        raise ValueError(f"runs={runs}: >= 1")
    times = step_times(plans, runs)
    out, at = [], 0
    for i in range(runs):
        n = len(plans[i % len(plans)].steps)
        out.append(float(sum(times[at:at + n])))
        at += n
    return out


# Warm-up: runs back to back in batches of about WARM_BATCH_US of GPU time, each ending with the
# clock probe (kgen/clocks.py), until the floor has passed and the probe runs within
# CLOCK_TOLERANCE of the fastest it ever ran in this process, at most WARM_MAX_US. A fixed
# warm-up was not enough: an H100 idled by host work between candidates sat at 345-645 MHz
# (nvidia-smi: "GPU idle") and timed every later candidate of a tune 2-4x slow.
WARM_BATCH_US = 5_000


CLOCK_TOLERANCE = 0.03


WARM_MAX_US = 2_000_000


WARM_FIRST_US = 500_000  # the first warm-up of a process: long enough to reach the full clock


def _warm_batch(plans: list[Timed], runs: int, probe, recorded: dict) -> tuple[list[float], float | None]:
    """GPU us of `runs` back-to-back runs' steps, and of the clock probe right after them (or None).
    `recorded` (batch size -> Sequence) keeps each size's recording to resubmit: recording a
    batch of a fast decode's 2000 runs took longer than running it (a tune's warm-ups spent
    most of their time recording)."""
    seq = recorded.get(runs)
    if seq is None:
        tail = [probe.step] if probe is not None else []
        seq = recorded[runs] = plans[0].device.sequence(_run_steps(plans, runs) + tail)
    times = seq.run(wait=True)
    return times, (times.pop() if probe is not None else None)


def warm_up(plans: list[Timed], gpu_us: float, *, min_runs: int = 2, max_batch: int = 2000) -> float:
    """Run back to back for at least `gpu_us` of GPU time (and `min_runs` per plan), then on
    until the GPU's clock is up: the probe within CLOCK_TOLERANCE of its fastest time in this
    process and no longer getting faster. Returns the GPU microseconds spent."""
    from .clocks import probe_for
    dev = plans[0].device
    # A CPU device has no idle clock to wait out: the floor alone.
    probe = probe_for(dev) if dev.caps.device_type != "cpu" else None
    if probe is not None and probe.best_us == float("inf"):
        gpu_us = max(gpu_us, WARM_FIRST_US)  # no full-clock reference yet: make one
    runs = min_runs * len(plans)
    spent, last_us = 0.0, float("inf")
    recorded: dict = {}
    try:
        while True:
            times, probe_us = _warm_batch(plans, runs, probe, recorded)
            spent += sum(times)
            up = True
            if probe_us is not None:
                probe.saw(probe_us)
                climbing = probe_us < last_us * (1 - CLOCK_TOLERANCE)
                up = probe_us <= probe.best_us * (1 + CLOCK_TOLERANCE) and not climbing
                last_us = probe_us
            if spent >= WARM_MAX_US or (spent >= gpu_us and up):
                return spent
            per_run = max(statistics.median(times), 1e-3)
            wanted = max(len(plans), min(max_batch, int(WARM_BATCH_US / per_run) + 1))
            if not wanted / 2 <= runs <= 2 * wanted:   # a new recording only when 2x off
                runs = wanted
    finally:
        for seq in recorded.values():
            seq.close()
