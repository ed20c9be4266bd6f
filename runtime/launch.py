"""Launching kernels: STYLE's one signature `kernel(buffers, push, groups, timed)` and recorded
sequences that are resubmitted as they are.

Arguments are checked against the ABI and the device limits before anything is recorded, so a
wrong push block or grid raises InvalidArgument instead of reaching the driver. GPU time comes
from two timestamps around each dispatch, both written at BOTTOM_OF_PIPE: the first once
everything before the dispatch has finished, the second once the dispatch has. In a sequence, a
dispatch may join the one before it (independent passes): no barrier and no timestamps between
them, so the GPU may run them side by side, and the pair brackets the whole group.

Threads: one-shot launches share the device's one command buffer and take turns on its lock; a
Sequence has command buffers and a fence of its own, so runs of different sequences overlap, and
runs of one sequence take turns on its lock.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence as SequenceT
import numbers
import operator
import threading
import weakref
from typing import Any

import vulkan

from kgen import abi

from . import handles
from .commands import BETWEEN, SETTLE, TO_HOST, CommandSlot, barrier
from .descriptors import COMPUTE, N_BINDINGS, DescriptorSet
from .errors import ClosedError, InvalidArgument
from .memory import Buffer
from .vk import check, ffi, lib

Buffers = Mapping[int, Buffer | None] | SequenceT[Buffer | None]
BIND_POINT = vulkan.VK_PIPELINE_BIND_POINT_COMPUTE
BOTTOM = vulkan.VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT
_QUERY_FLAGS = vulkan.VK_QUERY_RESULT_64_BIT | vulkan.VK_QUERY_RESULT_WAIT_BIT
_BINDINGS = frozenset(range(N_BINDINGS))


def check_push(where: str, push: bytes) -> Any:
    """The push block as a char[] view; it must be the whole abi block."""
    if len(push) != abi.PUSH_BYTES:
        raise InvalidArgument(where, "push", f"{len(push)} bytes", f"exactly abi.PUSH_BYTES = {abi.PUSH_BYTES} "
                              "bytes", "build the block with kgen.abi.pack()")
    return ffi.from_buffer(push)


def check_groups(where: str, groups: tuple[int, int, int], limits: tuple[int, int, int]) -> tuple[int, int, int]:
    try:
        groups = tuple(operator.index(g) for g in groups)  # ints, numpy ints; never floats
    except TypeError:
        raise InvalidArgument(where, "groups", groups, "three integer workgroup counts (x, y, z)") from None
    if len(groups) != 3:
        raise InvalidArgument(where, "groups", groups, "three workgroup counts (x, y, z)")
    for axis, (count, limit) in enumerate(zip(groups, limits)):
        if not 1 <= count <= limit:
            raise InvalidArgument(where, f"groups[{axis}]", count,
                                  f"1..{limit} (maxComputeWorkGroupCount[{axis}])",
                                  "a larger tile per workgroup or a loop over the grid in the shader")
    return groups


def resolve(dev: Any, where: str, buffers: Buffers) -> tuple[Buffer, ...]:
    """One Buffer per abi binding; bindings not given get the device's dummy buffer."""
    if isinstance(buffers, Mapping):
        if buffers.keys() - _BINDINGS:
            raise InvalidArgument(where, "buffers", f"binding(s) {sorted(buffers.keys() - _BINDINGS)}",
                                  f"bindings 0..{N_BINDINGS - 1} of kgen.abi.BINDINGS")
        given = [buffers.get(i) for i in range(N_BINDINGS)]
    else:
        given = list(buffers)
        if len(given) > N_BINDINGS:
            raise InvalidArgument(where, "buffers", f"{len(given)} buffers",
                                  f"{N_BINDINGS} (kgen.abi.BINDINGS)")
        given += [None] * (N_BINDINGS - len(given))
    bound = tuple(dev.dummy if b is None else b for b in given)
    for i, b in enumerate(bound):
        if not isinstance(b, Buffer) or b._device() is not dev:
            raise InvalidArgument(where, f"buffers[{i}]", repr(b), "a Buffer of this device")
        if b.closed:
            raise ClosedError(f"{where}: buffers[{i}] ({b!r})")
    return bound


def check_open(where: str, kernel: Any, bound: tuple[Buffer, ...]) -> None:
    """ClosedError when the kernel or a buffer was closed (perhaps by another thread) since
    they were checked; the caller holds the lock of the slot it is about to submit."""
    if kernel.handle is None:
        raise ClosedError(f"{where}: {kernel!r}")
    for i, b in enumerate(bound):
        if b.closed:
            raise ClosedError(f"{where}: buffers[{i}] ({b!r})")


class Timestamps:
    """A query pool of `count` timestamps read back as microseconds between pairs."""

    def __init__(self, vk_device: Any, count: int, *, period_ns: float, valid_bits: int):
        self._dev, self.count, self._period_us = vk_device, count, period_ns / 1000.0
        self._mask = (1 << valid_bits) - 1
        info = ffi.new("VkQueryPoolCreateInfo*", {"sType": vulkan.VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                                                  "queryType": vulkan.VK_QUERY_TYPE_TIMESTAMP, "queryCount": count})
        self.pool = handles.create("QueryPool", "vkCreateQueryPool", lib.vkCreateQueryPool, vk_device, info, ffi.NULL)
        self._values = ffi.new("uint64_t[]", count)

    def reset(self, cmd: Any, first: int = 0, count: int | None = None) -> None:
        lib.vkCmdResetQueryPool(cmd, self.pool, first, self.count - first if count is None else count)

    def write(self, cmd: Any, index: int) -> None:
        lib.vkCmdWriteTimestamp(cmd, BOTTOM, self.pool, index)

    def read(self) -> list[float]:
        check("vkGetQueryPoolResults", lib.vkGetQueryPoolResults(
            self._dev, self.pool, 0, self.count, 8 * self.count, self._values, 8, _QUERY_FLAGS))
        v, mask = self._values, self._mask
        # Masked subtraction also gives the right answer when the counter wrapped in between.
        return [((v[i + 1] - v[i]) & mask) * self._period_us for i in range(0, self.count, 2)]

    def close(self) -> None:
        if self.pool is not None:
            handles.release("QueryPool", lib.vkDestroyQueryPool, self._dev, self.pool, ffi.NULL)
            self.pool = None


def record_dispatch(cmd: Any, kernel: Any, dset: DescriptorSet, push: Any, groups: tuple[int, int, int],
                    base: tuple[int, int, int] | None = None) -> None:
    """Bind and dispatch `groups` workgroups; with `base`, the box of the grid that starts there
    (vkCmdDispatchBase on the kernel's dispatch-base pipeline: gl_WorkGroupID counts from base)."""
    layout = kernel.layout
    lib.vkCmdBindPipeline(cmd, BIND_POINT, kernel.handle if base is None else kernel.dispatch_base_handle())
    lib.vkCmdBindDescriptorSets(cmd, BIND_POINT, layout, 0, 1, dset.ptr, 0, ffi.NULL)
    lib.vkCmdPushConstants(cmd, layout, COMPUTE, 0, len(push), push)
    if base is None:
        lib.vkCmdDispatch(cmd, groups[0], groups[1], groups[2])
    else:
        lib.vkCmdDispatchBase(cmd, base[0], base[1], base[2], groups[0], groups[1], groups[2])


Box = tuple[tuple[int, int, int], tuple[int, int, int]]   # (base, counts) of a part of a grid


def boxes(groups: tuple[int, int, int], most: int) -> list[Box]:
    """`groups` cut into boxes of at most `most` workgroups (at least one each), in order:
    whole x-y planes while a plane fits, else whole x rows, else runs of x."""
    x, y, z = groups
    if x * y <= most:
        step = min(z, most // (x * y))
        return [((0, 0, z0), (x, y, min(step, z - z0))) for z0 in range(0, z, step)]
    if x <= most:
        step = most // x
        return [((0, y0, z0), (x, min(step, y - y0), 1)) for z0 in range(z) for y0 in range(0, y, step)]
    step = max(1, most)
    return [((x0, y0, z0), (min(step, x - x0), 1, 1)) for z0 in range(z) for y0 in range(y)
            for x0 in range(0, x, step)]


def box_count(groups: tuple[int, int, int], most: int) -> int:
    """len(boxes(groups, most)) without making them."""
    x, y, z = groups
    if x * y <= most:
        return -(-z // min(z, most // (x * y)))
    if x <= most:
        return z * -(-y // (most // x))
    return z * y * -(-x // max(1, most))


def _timestamps(dev: Any, count: int) -> Timestamps | None:
    """None when the queue cannot write timestamps (timestampValidBits == 0)."""
    if not dev.timestamp_bits:
        return None
    return Timestamps(dev.handle, count, period_ns=dev.caps.timestamp_period_ns, valid_bits=dev.timestamp_bits)


class Launcher:
    """The device's one-shot path: one command buffer re-recorded per launch, and the descriptor
    sets of one-shot launches. A launch holds `lock` from its last check of the kernel and
    buffers to its completion, so whoever holds the lock knows no launch is in progress."""

    def __init__(self, dev: Any):
        self.slot = CommandSlot(dev, one_time=True)
        self.lock = self.slot.lock
        self._sets = dev.set_cache   # evicting is safe: under the lock no launch is in flight
        try:
            self.timer = _timestamps(dev, 2)
        except BaseException:
            self.slot.close()
            raise

    def launch(self, kernel: Any, bound: tuple[Buffer, ...], push: Any, groups: tuple[int, int, int],
               timed: bool) -> float | None:
        with self.lock:
            check_open(f"kernel {kernel.name!r}", kernel, bound)
            dset = self._sets.get(bound)
            timer = self.timer if timed else None
            cmd = self.slot.begin()
            if timer:
                timer.reset(cmd)
            barrier(cmd, SETTLE)
            if timer:
                timer.write(cmd, 0)
            record_dispatch(cmd, kernel, dset, push, groups)
            if timer:
                timer.write(cmd, 1)
            barrier(cmd, TO_HOST)
            self.slot.end()
            self.slot.submit()
            self.slot.wait()
            return timer.read()[0] if timer else None

    def wait_out(self) -> None:
        """Return once no launch is in progress; the next one re-checks its kernel and buffers."""
        with self.lock:
            pass

    def close(self) -> None:
        with self.lock:
            self.slot.close()
            if self.timer is not None:
                self.timer.close()


# (kernel, buffers, push, groups[, joins_previous[, most_per_submission]])
Step = (tuple[Any, Buffers, bytes, tuple[int, int, int]] | tuple[Any, Buffers, bytes, tuple[int, int, int], bool]
        | tuple[Any, Buffers, bytes, tuple[int, int, int], bool, int | None])
# A timed stretch of a recording: (submission, step it is reported on, its dispatches as
# (kernel, descriptor set, push, groups, base or None)).
Interval = tuple[int, int, list[tuple[Any, DescriptorSet, Any, tuple[int, int, int], tuple[int, int, int] | None]]]


class Sequence:
    """Dispatches recorded once, with a barrier between consecutive dispatches and a timestamp
    pair around each; run() resubmits them unchanged. Push constants are captured at recording;
    buffers are bound by handle, so their contents may change between runs.
    A step whose fifth element is True joins the step before it: it neither reads nor writes what
    that group writes, so no barrier separates them and one timestamp pair brackets the group;
    its time is reported on the group's first step and the joined steps read 0.0.
    A step whose sixth element is a count dispatches its grid in boxes of at most that many
    workgroups (launch.boxes), each box in a submission of its own (vkCmdDispatchBase, so every
    workgroup sees the gl_WorkGroupID it has in the whole grid): the steps before it share the
    first box's submission, the steps after it the last's. Such a step joins no step and none
    joins it; its time is the sum of its boxes'. Without such a step the sequence is one command
    buffer, one submission per run (`submissions` says how many).

    Threads: `lock` (reentrant) is held by run(), wait() and close(); an owner that writes the
    inputs, runs and reads the outputs as one unit holds it across the three (kgen.Plan does),
    and close() then waits for a unit in progress. Buffer accesses in other threads wait for a
    run in flight through collect(), which takes only the command slot's lock."""

    def __init__(self, dev: Any, steps: Iterable[Step], *, timed: bool = True):
        self._device = weakref.ref(dev)
        self.lock = threading.RLock()
        self.slot = self.timer = None
        self._last: list[float] = []
        self._sets: dict[tuple[int, ...], DescriptorSet] = {}
        checked = [self._check(dev, i, step) for i, step in enumerate(steps)]
        if not checked:
            raise InvalidArgument("Device.sequence", "steps", "0 steps", "at least one dispatch")
        if checked[0][4]:
            raise InvalidArgument("Device.sequence", "steps[0][4]", True,
                                  "False: the first dispatch has nothing before it to join")
        split = [s[5] is not None and box_count(s[3], s[5]) > 1 for s in checked]
        for i in range(1, len(checked)):
            if checked[i][4] and (split[i] or split[i - 1]):
                raise InvalidArgument("Device.sequence", f"steps[{i}][4]", True, "False: a step dispatched "
                                      "over several submissions joins no step, and no step joins it")
        self.kernels = tuple(s[0] for s in checked)
        self.name = f"sequence ({', '.join(dict.fromkeys(k.name for k in self.kernels))})"
        self._buffers = tuple({b.serial: b for s in checked for b in s[1]}.values())
        self.serials = frozenset(b.serial for b in self._buffers)
        self._step_count = len(checked)
        try:
            for _, bound, _, _, _, _ in checked:
                key = tuple(b.serial for b in bound)
                if key not in self._sets:
                    self._sets[key] = dev.descriptor_sets.allocate(bound)
            intervals = self._intervals(checked, split)
            self._interval_steps = tuple(step for _, step, _ in intervals)
            self.submissions = intervals[-1][0] + 1
            self.slot = CommandSlot(dev, one_time=False, count=self.submissions)
            self.timer = _timestamps(dev, 2 * len(intervals)) if timed else None
            self._record(intervals)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _check(dev: Any, i: int, step: Step) -> tuple[Any, tuple[Buffer, ...], Any, tuple[int, int, int], bool,
                                                      int | None]:
        if len(step) not in (4, 5, 6):
            raise InvalidArgument("Device.sequence", f"steps[{i}]", f"{len(step)} elements",
                                  "(kernel, buffers, push, groups[, joins_previous[, most_per_submission]])")
        kernel, buffers, push, groups = step[:4]
        joins = step[4] if len(step) > 4 else False
        most = step[5] if len(step) > 5 else None
        if getattr(kernel, "device", None) is not dev:
            raise InvalidArgument("Device.sequence", f"steps[{i}][0]", repr(kernel), "a Kernel of this device")
        if kernel.handle is None:
            raise ClosedError(f"Device.sequence: steps[{i}][0] ({kernel!r})")
        if not isinstance(joins, bool):
            raise InvalidArgument("Device.sequence", f"steps[{i}][4]", repr(joins), "True or False")
        if most is not None and (isinstance(most, bool) or not isinstance(most, numbers.Integral) or most < 1):
            raise InvalidArgument("Device.sequence", f"steps[{i}][5]", repr(most),
                                  "None or a whole number >= 1 of workgroups per submission")
        where = f"Device.sequence: steps[{i}] ({kernel.name})"
        return (kernel, resolve(dev, where, buffers), check_push(where, push),
                check_groups(where, groups, dev.caps.max_workgroup_count), joins,
                None if most is None else int(most))

    def _intervals(self, checked: list, split: list[bool]) -> list[Interval]:
        """The recording as timed intervals: a group of joined steps is one, a box of a split step
        is one, and every box after a split step's first starts the next submission."""
        intervals: list[Interval] = []
        submission = 0
        for i, ((kernel, bound, push, groups, joins, most), cut) in enumerate(zip(checked, split)):
            dset = self._sets[tuple(b.serial for b in bound)]
            if not cut:
                if joins:
                    intervals[-1][2].append((kernel, dset, push, groups, None))
                else:
                    intervals.append((submission, i, [(kernel, dset, push, groups, None)]))
                continue
            for j, (base, counts) in enumerate(boxes(groups, most)):
                submission += j > 0
                intervals.append((submission, i, [(kernel, dset, push, counts, base)]))
        return intervals

    def _record(self, intervals: list[Interval]) -> None:
        timer, cmd, current = self.timer, None, -1
        per_submission = Counter(submission for submission, _, _ in intervals)
        for k, (submission, _, dispatches) in enumerate(intervals):
            if submission != current:
                if cmd is not None:
                    self.slot.end(current)
                current, cmd = submission, self.slot.begin(submission)
                if timer:   # the queries this buffer writes: each run writes them afresh
                    timer.reset(cmd, 2 * k, 2 * per_submission[submission])
                barrier(cmd, SETTLE)
            else:
                barrier(cmd, BETWEEN)
            if timer:
                timer.write(cmd, 2 * k)
            for kernel, dset, push, groups, base in dispatches:
                record_dispatch(cmd, kernel, dset, push, groups, base)
            if timer:
                timer.write(cmd, 2 * k + 1)
        barrier(cmd, TO_HOST)
        self.slot.end(current)

    @property
    def closed(self) -> bool:
        return self.slot is None

    def _live(self) -> Any:
        dev = self._device()
        if self.slot is None or dev is None or dev.closed:
            raise ClosedError(self.name)
        return dev

    def run(self, wait: bool = True) -> list[float] | None:
        """Submit once more. With wait, block and return GPU microseconds per step ([] when
        untimed); without, return None and let wait() (or any access to its buffers) collect it."""
        with self.lock:
            dev = self._live()
            with dev.calls, self.slot.lock:
                for b in self._buffers:
                    if b.closed:
                        raise ClosedError(f"{self.name}: its {b!r}")
                self.slot.wait()  # a previous run(wait=False) that nobody collected
                self.slot.submit()
                dev.in_flight.add(self)
                if not wait:
                    return None
                self._collect(self.slot)
                return list(self._last)

    def _per_step(self, interval_us: list[float]) -> list[float]:
        """One figure per step: each group's time on its first step, 0.0 on the steps that joined
        it, the sum of its boxes' on a step split over submissions."""
        times = [0.0] * self._step_count
        for step, us in zip(self._interval_steps, interval_us):
            times[step] += us
        return times

    def _collect(self, slot: CommandSlot) -> None:
        """Wait for the run in flight, if any, and keep its times (the caller holds slot.lock)."""
        if slot.pending:
            slot.wait()
            if (dev := self._device()) is not None:
                dev.in_flight.discard(self)
            # Read only after a run: queries never written would make a WAIT read block forever.
            self._last = self._per_step(self.timer.read()) if self.timer else []

    def collect(self) -> None:
        """Wait for a run in flight, whichever thread started it; nothing when none is or the
        sequence is closed. Buffer accesses call this for the sequences that bind the buffer."""
        slot = self.slot
        if slot is not None:
            with slot.lock:
                self._collect(slot)  # after a close() meanwhile, nothing is pending

    def wait(self) -> list[float]:
        """The GPU microseconds of the latest run, waiting for it if needed ([] before any)."""
        with self.lock:
            dev = self._live()
            with dev.calls:
                self.collect()
            return list(self._last)

    def close(self) -> None:
        """Wait for a run in flight, then free the command buffer, queries and sets."""
        with self.lock:
            dev = self._device()
            if self.slot is not None:
                with self.slot.lock:
                    self.slot.close()
            if self.timer is not None:
                self.timer.close()
            if dev is not None and not dev.closed:  # a closing device destroys the pools, and the sets with them
                for dset in self._sets.values():
                    dev.descriptor_sets.free(dset)
            self._sets.clear()
            self.slot = self.timer = None
            if dev is not None:
                dev.in_flight.discard(self)
                dev.sequences.discard(self)

    def __enter__(self) -> "Sequence":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
