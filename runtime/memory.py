"""Storage buffers, the staging path to them, and a pool that reuses them by size class.

Memory policy: on a unified-memory device (lavapipe, integrated GPUs) a buffer lives in a
DEVICE_LOCAL | HOST_VISIBLE | HOST_COHERENT type and is mapped once, so write() and read() are a
memmove. On a discrete GPU it lives in plain DEVICE_LOCAL memory and write()/read() go through
one host-visible staging buffer and a copy command, in chunks of at most STAGING_BYTES.

Threads: a buffer's lock is held for each host access (write, read, close), the staging path's
for each transfer through it, and the pool's for its free lists; so a buffer may be read,
written and closed from any thread, and close() never frees memory a transfer, a launch or a
sequence run still uses.
"""
from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import vulkan

from . import handles
from .commands import SETTLE, TO_HOST, CommandSlot, barrier
from .errors import ClosedError, InvalidArgument
from .vk import check, ffi, lib

STAGING_BYTES = 64 << 20
WHOLE_SIZE = 2**64 - 1
USAGE = (vulkan.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | vulkan.VK_BUFFER_USAGE_TRANSFER_SRC_BIT
         | vulkan.VK_BUFFER_USAGE_TRANSFER_DST_BIT)
_DEVICE_LOCAL = vulkan.VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT
_MAPPABLE = vulkan.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | vulkan.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
_CACHED = vulkan.VK_MEMORY_PROPERTY_HOST_CACHED_BIT
_serials = itertools.count(1)


class MemoryTypes:
    """The device's memory types, and which one each kind of buffer prefers, best first."""

    def __init__(self, physical_device: Any, *, unified: bool):
        props = ffi.new("VkPhysicalDeviceMemoryProperties*")
        lib.vkGetPhysicalDeviceMemoryProperties(physical_device, props)
        self.flags = [props.memoryTypes[i].propertyFlags for i in range(props.memoryTypeCount)]
        # Map device buffers only where host access is as fast as device access (unified
        # memory); a discrete GPU's BAR window is small and slow to read.
        self.map_device_buffers = unified
        self.prefs = {"device": [_DEVICE_LOCAL | _MAPPABLE, _DEVICE_LOCAL] if unified else [_DEVICE_LOCAL],
                      "staging": [_MAPPABLE | _CACHED, _MAPPABLE]}

    def pick(self, type_bits: int, kind: str) -> tuple[int, bool]:
        """(memory type index, whether to map it) for a buffer of `kind` ("device" | "staging")."""
        allowed = [i for i in range(len(self.flags)) if type_bits >> i & 1]
        chosen = next((i for want in self.prefs[kind] for i in allowed if self.flags[i] & want == want), None)
        if chosen is None and kind == "staging":
            raise InvalidArgument("staging buffer", "memoryTypeBits", hex(type_bits), "a host-visible, "
                                  "coherent memory type", "the driver offers none for buffers")
        chosen = allowed[0] if chosen is None else chosen
        mappable = self.flags[chosen] & _MAPPABLE == _MAPPABLE
        return chosen, mappable and (kind == "staging" or self.map_device_buffers)


def check_size(nbytes: Any, limit: int, where: str = "Device.buffer") -> int:
    if not isinstance(nbytes, (int, np.integer)) or isinstance(nbytes, bool):
        raise TypeError(f"{where}: nbytes must be an int, got {type(nbytes).__name__}")
    if not 0 < nbytes <= limit:
        raise InvalidArgument(where, "nbytes", int(nbytes), f"1..{limit} (maxStorageBufferRange)",
                              "a buffer holds at least one byte" if nbytes <= 0
                              else "split the tensor over several buffers or dispatches")
    return int(nbytes)


def _as_bytes(data: bytes | bytearray | memoryview | np.ndarray) -> Any:
    """A char[] view of `data` without a copy (a copy only for a non-contiguous array)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data)
    return ffi.from_buffer(data)


class Buffer:
    """A storage buffer (usage STORAGE | TRANSFER_SRC | TRANSFER_DST) of exactly `nbytes` bytes.

    Holds only a weak link to its Device: closing the device destroys the buffer, and a later
    close() here is a no-op. Before a host access the buffer waits for the runs of sequences that
    bind it, whichever thread started them; runs of sequences that do not bind it are not waited
    for."""

    def __init__(self, dev: Any, nbytes: int, *, kind: str = "device"):
        self.nbytes = nbytes
        self.serial = next(_serials)  # never reused, unlike handle values: keys descriptor sets
        self.handle = self._memory = self._mapped = None
        self._lock = threading.RLock()
        # Set first by close(): launches and runs check it, so none starts on a buffer on its way out.
        self._retired = False
        self._device = weakref.ref(dev)
        self._dev = dev.handle
        info = ffi.new("VkBufferCreateInfo*", {
            "sType": vulkan.VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, "size": nbytes,
            "usage": USAGE, "sharingMode": vulkan.VK_SHARING_MODE_EXCLUSIVE})
        self.handle = handles.create("Buffer", "vkCreateBuffer", lib.vkCreateBuffer, self._dev, info, ffi.NULL)
        try:
            self._bind_memory(dev.memory_types, kind)
        except BaseException:
            self._destroy()
            raise

    def _bind_memory(self, types: MemoryTypes, kind: str) -> None:
        req = ffi.new("VkMemoryRequirements*")
        lib.vkGetBufferMemoryRequirements(self._dev, self.handle, req)
        index, mapped = types.pick(req.memoryTypeBits, kind)
        alloc = ffi.new("VkMemoryAllocateInfo*", {"sType": vulkan.VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                                                  "allocationSize": req.size, "memoryTypeIndex": index})
        self._memory = handles.create("DeviceMemory", "vkAllocateMemory", lib.vkAllocateMemory,
                                      self._dev, alloc, ffi.NULL)
        check("vkBindBufferMemory", lib.vkBindBufferMemory(self._dev, self.handle, self._memory, 0))
        if mapped:
            ptr = ffi.new("void**")
            check("vkMapMemory", lib.vkMapMemory(self._dev, self._memory, 0, WHOLE_SIZE, 0, ptr))
            self._mapped = ffi.cast("char*", ptr[0])

    @property
    def closed(self) -> bool:
        return self._retired or self.handle is None

    @property
    def host_visible(self) -> bool:
        return self._mapped is not None

    def _live_device(self) -> Any:
        dev = self._device()
        if self.closed or dev is None or dev.closed:
            raise ClosedError(f"buffer #{self.serial}")
        return dev

    def _host_access(self, dev: Any, access: Callable[[], Any]) -> Any:
        """access(), holding the buffer, once the runs in flight that bind it are done."""
        with dev.calls, self._lock:
            if self.closed:
                raise ClosedError(f"buffer #{self.serial}")
            if dev.in_flight:
                dev.settle(self)
            return access()

    def _span(self, what: str, offset: int, n: int) -> None:
        if offset < 0 or n < 0 or offset + n > self.nbytes:
            raise InvalidArgument(f"Buffer.{what}", "offset + nbytes", f"{offset} + {n}",
                                  f"the buffer's {self.nbytes} bytes")

    def write(self, data: bytes | bytearray | memoryview | np.ndarray, offset: int = 0) -> None:
        dev = self._live_device()
        src = _as_bytes(data)
        self._span("write", offset, len(src))
        def access() -> None:
            if self._mapped is not None:
                ffi.memmove(self._mapped + offset, src, len(src))
            else:
                dev.staging.upload(self, src, offset)
        self._host_access(dev, access)

    def read(self, nbytes: int | None = None, offset: int = 0) -> bytes:
        dev = self._live_device()
        n = self.nbytes - offset if nbytes is None else nbytes
        self._span("read", offset, n)
        def access() -> bytes:
            if self._mapped is not None:
                return ffi.buffer(self._mapped + offset, n)[:]
            return dev.staging.download(self, n, offset)
        return self._host_access(dev, access)

    def read_into(self, out: bytearray | memoryview | np.ndarray, offset: int = 0) -> None:
        """Fill the writable, contiguous `out` from the buffer at `offset`: read() without its
        allocation and copy, for results that go straight into an array."""
        dev = self._live_device()
        if isinstance(out, np.ndarray) and not out.flags.c_contiguous:
            raise InvalidArgument("Buffer.read_into", "out", "a non-contiguous array", "C-contiguous memory")
        dst = ffi.from_buffer(out, require_writable=True)
        self._span("read_into", offset, len(dst))
        def access() -> None:
            if self._mapped is not None:
                ffi.memmove(dst, self._mapped + offset, len(dst))
            else:
                dev.staging.download_into(self, dst, offset)
        self._host_access(dev, access)

    def close(self) -> None:
        """Destroy the buffer once no transfer, launch or sequence run uses it (in any thread);
        harmless when it (or its device) is already closed."""
        dev = self._device()
        if dev is None:
            self._destroy()
            return
        if not dev.calls.enter():
            self._retired = True  # a closing device destroys it once the calls in progress end
            return
        try:
            with self._lock:
                if self._retired:
                    return
                self._retired = True
                dev.retire(self)
                self._destroy()
        finally:
            dev.calls.exit()

    def _destroy(self) -> None:
        with self._lock:
            self._retired = True
            if self._memory is not None:
                handles.release("DeviceMemory", lib.vkFreeMemory, self._dev, self._memory, ffi.NULL)  # unmaps too
            if self.handle is not None:
                handles.release("Buffer", lib.vkDestroyBuffer, self._dev, self.handle, ffi.NULL)
            self.handle = self._memory = self._mapped = None

    def __enter__(self) -> "Buffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("mapped" if self.host_visible else "device-local")
        return f"Buffer(#{self.serial}, {self.nbytes} bytes, {state})"


class Staging:
    """The copy path to device-local buffers: one mapped buffer and one command slot, used by one
    transfer at a time (the slot's lock)."""

    def __init__(self, dev: Any):
        self.slot = CommandSlot(dev, one_time=True)
        self.host: Buffer | None = None
        self._dev = dev
        self._region = ffi.new("VkBufferCopy*")

    def _host(self, n: int) -> Buffer:
        want = min(max(n, 1 << 20), STAGING_BYTES)
        if self.host is None or self.host.nbytes < want:
            if self.host is not None:
                self.host._destroy()
            self.host = Buffer(self._dev, want, kind="staging")
        return self.host

    def _copy(self, src: Buffer, dst: Buffer, *, src_offset: int, dst_offset: int, n: int) -> None:
        cmd = self.slot.begin()
        barrier(cmd, SETTLE)
        self._region.srcOffset, self._region.dstOffset, self._region.size = src_offset, dst_offset, n
        lib.vkCmdCopyBuffer(cmd, src.handle, dst.handle, 1, self._region)
        barrier(cmd, TO_HOST)
        self.slot.end()
        self.slot.submit()
        self.slot.wait()

    def upload(self, dst: Buffer, src: Any, offset: int) -> None:
        with self.slot.lock:
            host = self._host(len(src))
            for start in range(0, len(src), host.nbytes):
                n = min(host.nbytes, len(src) - start)
                ffi.memmove(host._mapped, src + start, n)
                self._copy(host, dst, src_offset=0, dst_offset=offset + start, n=n)

    def download(self, src: Buffer, nbytes: int, offset: int) -> bytes:
        with self.slot.lock:
            host = self._host(nbytes)
            parts = []
            for start in range(0, nbytes, host.nbytes):
                n = min(host.nbytes, nbytes - start)
                self._copy(src, host, src_offset=offset + start, dst_offset=0, n=n)
                parts.append(ffi.buffer(host._mapped, n)[:])
            return parts[0] if len(parts) == 1 else b"".join(parts)

    def download_into(self, src: Buffer, dst: Any, offset: int) -> None:
        with self.slot.lock:
            host = self._host(len(dst))
            for start in range(0, len(dst), host.nbytes):
                n = min(host.nbytes, len(dst) - start)
                self._copy(src, host, src_offset=offset + start, dst_offset=0, n=n)
                ffi.memmove(dst + start, host._mapped, n)

    def close(self) -> None:
        with self.slot.lock:
            self.slot.close()
            if self.host is not None:
                self.host._destroy()
                self.host = None


def size_class(nbytes: int, limit: int) -> int:
    """nbytes rounded up to a multiple of 256 and to one of four steps per power of two: at
    most 255 bytes or 25% of slack, whichever is more."""
    if nbytes <= 256:
        return 256
    step = 1 << max(8, nbytes.bit_length() - 3)
    return min(-(-nbytes // step) * step, limit)


class BufferPool:
    """Free buffers by size class, so that repeated calls with similar sizes reuse them.

    acquire() returns a buffer of at least `nbytes` (its `nbytes` is the class size); release()
    hands it back. At most KEEP free buffers are kept per class; the rest are closed."""

    KEEP = 4

    def __init__(self, dev: Any):
        self._device = weakref.ref(dev)
        self._free: dict[int, list[Buffer]] = {}
        self._lock = threading.Lock()

    def acquire(self, nbytes: int) -> Buffer:
        dev = self._device()
        if dev is None or dev.closed:
            raise ClosedError("buffer pool")
        limit = dev.caps.max_storage_buffer_range
        cls = size_class(check_size(nbytes, limit, "BufferPool.acquire"), limit)
        with self._lock:
            free = self._free.get(cls, [])
            while free:
                buf = free.pop()
                if not buf.closed:
                    return buf
        return dev.buffer(cls)

    def release(self, buf: Buffer) -> None:
        if buf.closed:
            return
        dev = self._device()
        if dev is None or buf._device() is not dev:
            raise InvalidArgument("BufferPool.release", "buf", repr(buf), "a buffer of this pool's device")
        cls = size_class(buf.nbytes, dev.caps.max_storage_buffer_range)
        with self._lock:
            free = self._free.setdefault(cls, [])
            if any(b is buf for b in free):
                return  # released twice
            # Not a class size (acquire() cannot hand it out), or enough of its class kept.
            keep = cls == buf.nbytes and len(free) < self.KEEP
            if keep:
                free.append(buf)
        if not keep:
            buf.close()

    def clear(self) -> None:
        """Close every free buffer."""
        with self._lock:
            free, self._free = self._free, {}
        for bufs in free.values():
            for buf in bufs:
                buf.close()

    @property
    def free_count(self) -> int:
        with self._lock:
            return sum(not b.closed for free in self._free.values() for b in free)
