"""Launching kernels: STYLE's one signature `kernel(buffers, push, groups, timed)` and recorded
sequences that are resubmitted as they are.

Arguments are checked against the ABI and the device limits before anything is recorded, so a
wrong push block or grid raises InvalidArgument instead of reaching the driver. GPU time comes
from two timestamps around each dispatch, both written at BOTTOM_OF_PIPE: the first once
everything before the dispatch has finished, the second once the dispatch has. In a sequence, a
dispatch may join the one before it (independent passes): no barrier and no timestamps between
them, so the GPU may run them side by side, and the pair brackets the whole group.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence as SequenceT
import operator
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
        if b.handle is None:
            raise ClosedError(f"{where}: buffers[{i}] ({b!r})")
    return bound


class Timestamps:
    """A query pool of `count` timestamps read back as microseconds between pairs."""

    def __init__(self, vk_device: Any, count: int, *, period_ns: float, valid_bits: int):
        self._dev, self.count, self._period_us = vk_device, count, period_ns / 1000.0
        self._mask = (1 << valid_bits) - 1
        info = ffi.new("VkQueryPoolCreateInfo*", {"sType": vulkan.VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                                                  "queryType": vulkan.VK_QUERY_TYPE_TIMESTAMP, "queryCount": count})
        self.pool = handles.create("QueryPool", "vkCreateQueryPool", lib.vkCreateQueryPool, vk_device, info, ffi.NULL)
        self._values = ffi.new("uint64_t[]", count)

    def reset(self, cmd: Any) -> None:
        lib.vkCmdResetQueryPool(cmd, self.pool, 0, self.count)

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


def record_dispatch(cmd: Any, kernel: Any, dset: DescriptorSet, push: Any, groups: tuple[int, int, int]) -> None:
    layout = kernel.layout
    lib.vkCmdBindPipeline(cmd, BIND_POINT, kernel.handle)
    lib.vkCmdBindDescriptorSets(cmd, BIND_POINT, layout, 0, 1, dset.ptr, 0, ffi.NULL)
    lib.vkCmdPushConstants(cmd, layout, COMPUTE, 0, len(push), push)
    lib.vkCmdDispatch(cmd, groups[0], groups[1], groups[2])


def _timestamps(dev: Any, count: int) -> Timestamps | None:
    """None when the queue cannot write timestamps (timestampValidBits == 0)."""
    if not dev.timestamp_bits:
        return None
    return Timestamps(dev.handle, count, period_ns=dev.caps.timestamp_period_ns, valid_bits=dev.timestamp_bits)


class Launcher:
    """The device's one-shot path: one command buffer re-recorded per launch."""

    def __init__(self, dev: Any):
        self.slot = CommandSlot(dev, one_time=True)
        try:
            self.timer = _timestamps(dev, 2)
        except BaseException:
            self.slot.close()
            raise

    def launch(self, kernel: Any, dset: DescriptorSet, push: Any, groups: tuple[int, int, int],
               timed: bool) -> float | None:
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

    def close(self) -> None:
        self.slot.close()
        if self.timer is not None:
            self.timer.close()


# (kernel, buffers, push, groups) or (kernel, buffers, push, groups, joins_previous)
Step = tuple[Any, Buffers, bytes, tuple[int, int, int]] | tuple[Any, Buffers, bytes, tuple[int, int, int], bool]


class Sequence:
    """Dispatches recorded once into one command buffer, with a barrier between consecutive
    dispatches and a timestamp pair around each; run() resubmits it unchanged. Push constants are
    captured at recording; buffers are bound by handle, so their contents may change between runs.
    A step whose fifth element is True joins the step before it: it neither reads nor writes what
    that group writes, so no barrier separates them and one timestamp pair brackets the group;
    its time is reported on the group's first step and the joined steps read 0.0."""

    def __init__(self, dev: Any, steps: Iterable[Step], *, timed: bool = True):
        self._device = weakref.ref(dev)
        self.slot = self.timer = None
        self._last: list[float] = []
        self._sets: dict[tuple[int, ...], DescriptorSet] = {}
        checked = [self._check(dev, i, step) for i, step in enumerate(steps)]
        if not checked:
            raise InvalidArgument("Device.sequence", "steps", "0 steps", "at least one dispatch")
        if checked[0][4]:
            raise InvalidArgument("Device.sequence", "steps[0][4]", True,
                                  "False: the first dispatch has nothing before it to join")
        self.kernels = tuple(s[0] for s in checked)
        self._joins = tuple(s[4] for s in checked)
        self._buffers = tuple({b.serial: b for s in checked for b in s[1]}.values())
        try:
            for _, bound, _, _, _ in checked:
                key = tuple(b.serial for b in bound)
                if key not in self._sets:
                    self._sets[key] = dev.descriptor_sets.allocate(bound)
            self.slot = CommandSlot(dev, one_time=False)
            self.timer = _timestamps(dev, 2 * self._joins.count(False)) if timed else None
            self._record(checked)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _check(dev: Any, i: int, step: Step) -> tuple[Any, tuple[Buffer, ...], Any, tuple[int, int, int], bool]:
        if len(step) not in (4, 5):
            raise InvalidArgument("Device.sequence", f"steps[{i}]", f"{len(step)} elements",
                                  "(kernel, buffers, push, groups[, joins_previous])")
        kernel, buffers, push, groups = step[:4]
        joins = step[4] if len(step) == 5 else False
        if getattr(kernel, "device", None) is not dev:
            raise InvalidArgument("Device.sequence", f"steps[{i}][0]", repr(kernel), "a Kernel of this device")
        if not isinstance(joins, bool):
            raise InvalidArgument("Device.sequence", f"steps[{i}][4]", repr(joins), "True or False")
        where = f"Device.sequence: steps[{i}] ({kernel.name})"
        return (kernel, resolve(dev, where, buffers), check_push(where, push),
                check_groups(where, groups, dev.caps.max_workgroup_count), joins)

    def _record(self, checked: list) -> None:
        cmd, timer = self.slot.begin(), self.timer
        if timer:
            timer.reset(cmd)
        barrier(cmd, SETTLE)
        group = -1
        for i, (kernel, bound, push, groups, joins) in enumerate(checked):
            if not joins:
                group += 1
                if i:
                    barrier(cmd, BETWEEN)
                if timer:
                    timer.write(cmd, 2 * group)
            record_dispatch(cmd, kernel, self._sets[tuple(b.serial for b in bound)], push, groups)
            group_ends = i + 1 == len(checked) or not checked[i + 1][4]
            if timer and group_ends:
                timer.write(cmd, 2 * group + 1)
        barrier(cmd, TO_HOST)
        self.slot.end()

    @property
    def closed(self) -> bool:
        return self.slot is None

    def _live(self) -> Any:
        dev = self._device()
        if self.slot is None or dev is None or dev.closed:
            raise ClosedError("sequence")
        return dev

    def run(self, wait: bool = True) -> list[float] | None:
        """Submit once more. With wait, block and return GPU microseconds per step ([] when
        untimed); without, return None and let wait() (or any buffer access) collect it."""
        dev = self._live()
        for b in self._buffers:
            if b.handle is None:
                raise ClosedError(f"sequence: its {b!r}")
        self.slot.wait()  # a previous run(wait=False) that nobody collected
        self.slot.submit()
        dev.in_flight.add(self)
        return self.wait() if wait else None

    def _per_step(self, group_us: list[float]) -> list[float]:
        """One figure per step: each group's time on its first step, 0.0 on the steps that joined it."""
        groups = iter(group_us)
        return [0.0 if joins else next(groups) for joins in self._joins]

    def wait(self) -> list[float]:
        """The GPU microseconds of the latest run, waiting for it if needed ([] before any)."""
        dev = self._live()
        if self.slot.pending:
            self.slot.wait()
            dev.in_flight.discard(self)
            # Read only after a run: queries never written would make a WAIT read block forever.
            self._last = self._per_step(self.timer.read()) if self.timer else []
        return list(self._last)

    def close(self) -> None:
        """Wait for a run in flight, then free the command buffer, queries and sets."""
        dev = self._device()
        if self.slot is not None:
            self.slot.close()
        if self.timer is not None:
            self.timer.close()
        if dev is not None:
            if not dev.closed:  # a closing device destroys the pools, and the sets with them
                for dset in self._sets.values():
                    dev.descriptor_sets.free(dset)
            dev.in_flight.discard(self)
            dev.sequences.discard(self)
        self._sets.clear()
        self.slot = self.timer = None

    def __enter__(self) -> "Sequence":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
