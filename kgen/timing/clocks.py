"""A clock probe: one small kernel whose GPU time only depends on the SM clock.

An H100 left idle by host work (compiling, checking, uploading) drops its SM clock from 1980 MHz
to 345-645 MHz, and its governor takes hundreds of milliseconds of steady load to bring it
back: a fixed short warm-up then times every later candidate of a tune 2-4x slow (seen with a
plan kept alive as a sentinel: it slowed in lock-step). Timing the probe in the same submission
as the warm-up runs says where the clock is: its time is a chain of dependent FMAs in one
subgroup, so it scales with 1 / clock and with nothing else (no memory, no other workgroups).
"""
from __future__ import annotations

import functools
import weakref
from typing import Any

from .. import abi
from ..compile import create_with
from .roofline import FMA_X, FMA_Y, _push, _render

PROBE_WG = 32
PROBE_ITERS = 1024       # loop trips of 8 dependent FMAs: ~20 us at 1980 MHz on an H100, long
                         # enough that timestamp jitter stays well under CLOCK_TOLERANCE
_probes: "weakref.WeakKeyDictionary[Any, ClockProbe]" = weakref.WeakKeyDictionary()


class ClockProbe:
    """The probe's step for one device, and the fastest it has run in this process: the
    reference of a full clock once anything has warmed the GPU up."""

    def __init__(self, device: Any):
        source = _render("fma.comp.j2", vec="vec4", scalar="float", wg=PROBE_WG, chains=1, unroll=8)
        self.kernel = create_with(source, functools.partial(device.pipeline, name="clock probe"), name="clock_probe")
        self._out = device.buffer(4 * PROBE_WG)
        self.step = (self.kernel, {abi.BINDING["out"]: self._out},
                     _push(iters=PROBE_ITERS, x=FMA_X, y=FMA_Y), (1, 1, 1))
        self.best_us = float("inf")

    def saw(self, us: float) -> None:
        self.best_us = min(self.best_us, us)


def probe_for(device: Any) -> ClockProbe:
    probe = _probes.get(device)
    if probe is None:
        probe = _probes[device] = ClockProbe(device)
    return probe
