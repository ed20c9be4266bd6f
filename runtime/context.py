"""Device: one Vulkan device opened for kgen, and the owner of everything made on it.

Opening creates the instance, the logical device (one compute queue, every feature of
runtime.features the device supports), the shared layouts, the pipeline cache, a dummy buffer
and the one-shot launch path. close() waits idle and destroys it all in reverse order,
including the buffers, kernels and sequences made through it; those objects hold only a weak
link back, so closing them afterwards is harmless. Nothing relies on __del__.

Threads: a Device, its buffers, kernels and sequences may be used from several threads at once.
The queue has a lock (vkQueueSubmit and vkDeviceWaitIdle need one), each command buffer has its
own pool, fence and lock, and every call on the device counts itself in `calls`, so close() in
one thread makes later calls in the others raise ClosedError and waits for the calls already
running before it destroys anything.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import vulkan

from kgen.caps import Caps
from kgen.select import default_index

from . import handles, vk
from .descriptors import DescriptorSets, Layouts, SetCache
from .devices import query_caps
from .errors import ClosedError, InvalidArgument
from .features import PIPELINE_STATISTICS, enable_chain
from .launch import Launcher, Sequence, Step
from .memory import Buffer, BufferPool, MemoryTypes, Staging, check_size
from .pipeline import Kernel, build
from .pipeline_cache import PipelineCache

DUMMY_BYTES = 256
UNIFIED_MEMORY = ("cpu", "integrated")


def _api(caps: Caps) -> tuple[int, int]:
    """The version the device is used at: its own, capped by the instance's (vk.API_VERSION)."""
    device = tuple(int(x) for x in caps.api_version.split(".")[:2])
    return min(device, (vulkan.VK_VERSION_MAJOR(vk.API_VERSION), vulkan.VK_VERSION_MINOR(vk.API_VERSION)))


def _compute_family(physical_device: Any) -> tuple[int, int]:
    """(index, timestampValidBits) of the first queue family that can run compute: the family
    devices.py reads timestamp bits from."""
    for i, family in enumerate(vulkan.vkGetPhysicalDeviceQueueFamilyProperties(physical_device)):
        if family.queueFlags & vulkan.VK_QUEUE_COMPUTE_BIT:
            return i, family.timestampValidBits
    raise InvalidArgument("Device", "queue families", "none with VK_QUEUE_COMPUTE_BIT", "one compute family")


class Calls:
    """The calls in progress on one Device. After shut() no call starts (entering raises
    ClosedError naming `what()`), and shut() returns once the calls already running have ended.
    A thread may enter again while inside a call; it must not close the device from inside one."""

    def __init__(self, what: Callable[[], str]):
        self._what = what
        self._lock = threading.Lock()
        self._running = 0
        self._ended = threading.Event()  # set by the last call to end after shut()
        self.shut_down = False

    def enter(self) -> bool:
        """Count one more call; False (nothing counted) once shut."""
        with self._lock:
            if self.shut_down:
                return False
            self._running += 1
            return True

    def exit(self) -> None:
        with self._lock:
            self._running -= 1
            if self.shut_down and not self._running:
                self._ended.set()

    def __enter__(self) -> None:
        if not self.enter():
            raise ClosedError(self._what())

    def __exit__(self, *exc: object) -> None:
        self.exit()

    def shut(self) -> None:
        with self._lock:
            self.shut_down = True
            if not self._running:
                return
        self._ended.wait()


class Device:
    """A Vulkan device for kgen: Device(index=None) picks kgen.select.default_index (KGEN_DEVICE).

    capture_statistics=True asks the driver to keep each pipeline's statistics for
    Kernel.statistics() (VK_KHR_pipeline_executable_properties, where the device offers it). It
    is device-wide, so no kernel cache mixes pipelines made with and without it, and the
    pipeline cache file is neither read nor written: the statistics come from a real compile.

    Shareable across threads (see the module's docstring): one-shot kernel launches take turns on
    one command buffer, runs of different sequences overlap, and a buffer access waits only for
    the runs of sequences that bind that buffer."""

    def __init__(self, index: int | None = None, *, capture_statistics: bool = False):
        self.calls = Calls(self._name)
        self.queue_lock = threading.Lock()
        # Guards making and dropping kernels and sequences, and the lazy staging path.
        self.registry_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._destroyed = False
        self.capture_statistics = capture_statistics
        self.instance = self.physical_device = self.handle = self.queue = None
        self.layouts = self.descriptor_sets = self.set_cache = self.pipeline_cache = None
        self.dummy = self.launcher = self._staging = self.memory_types = None
        self.enabled_features: frozenset[str] = frozenset()
        self.extensions: tuple[str, ...] = ()
        self.buffers: set[Buffer] = set()
        self.kernels: dict[Any, Kernel] = {}
        self.sequences: set[Sequence] = set()
        self.in_flight: set[Sequence] = set()   # submitted and not yet collected
        self.pool = BufferPool(self)
        try:
            self._open(index)
        except BaseException:
            self.close()
            raise

    # --- opening -------------------------------------------------------------------------------
    def _open(self, index: int | None) -> None:
        self.instance = handles.adopt("Instance", vk.create_instance())
        physical = vk.call(vulkan.vkEnumeratePhysicalDevices, self.instance)
        all_caps = [query_caps(self.instance, pd) for pd in physical]
        if index is None:
            index = default_index(all_caps)
        elif not 0 <= index < len(all_caps):
            raise InvalidArgument("Device", "index", index, f"0..{len(all_caps) - 1} "
                                  f"({len(all_caps)} Vulkan device(s): `kgen devices` lists them)")
        self.index, self.physical_device, self.caps = index, physical[index], all_caps[index]
        self.queue_family, self.timestamp_bits = _compute_family(self.physical_device)
        self._create_device()
        queue = vk.ffi.new("VkQueue*")
        vk.lib.vkGetDeviceQueue(self.handle, self.queue_family, 0, queue)
        self.queue = queue[0]
        self.memory_types = MemoryTypes(self.physical_device, unified=self.caps.device_type in UNIFIED_MEMORY)
        self.layouts = Layouts(self.handle)
        self.descriptor_sets = DescriptorSets(self.handle, self.layouts)
        self.set_cache = SetCache(self.descriptor_sets)
        self.pipeline_cache = PipelineCache(self.handle, self.caps, persistent=not self.capture_statistics)
        self.dummy = self.buffer(DUMMY_BYTES)
        self.launcher = Launcher(self)
        self.dummy.write(bytes(DUMMY_BYTES))

    def _create_device(self) -> None:
        requested = frozenset({PIPELINE_STATISTICS} if self.capture_statistics else ())
        chain = enable_chain(self.physical_device, api=_api(self.caps), extensions=self.caps.extensions,
                             requested=requested)
        names = [vk.ffi.new("char[]", e.encode()) for e in chain.extensions]
        name_array = vk.ffi.new("const char*[]", names) if names else vk.ffi.NULL
        priority = vk.ffi.new("float[1]", [1.0])
        queue_info = vk.ffi.new("VkDeviceQueueCreateInfo*", {
            "sType": vulkan.VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, "queueFamilyIndex": self.queue_family,
            "queueCount": 1, "pQueuePriorities": priority})
        info = vk.ffi.new("VkDeviceCreateInfo*", {
            "sType": vulkan.VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, "pNext": chain.head,
            "queueCreateInfoCount": 1, "pQueueCreateInfos": queue_info,
            "enabledExtensionCount": len(names), "ppEnabledExtensionNames": name_array})
        # chain.keep, names, priority and queue_info are all referenced until this returns.
        self.handle = handles.create("Device", "vkCreateDevice", vk.lib.vkCreateDevice,
                                     self.physical_device, info, vk.ffi.NULL)
        self.enabled_features, self.extensions = chain.enabled, chain.extensions

    # --- what callers use ----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.calls.shut_down

    def _name(self) -> str:
        return f"device {self.caps.name!r}" if hasattr(self, "caps") else "device"

    def _live(self) -> None:
        if self.closed:
            raise ClosedError(self._name())

    def buffer(self, nbytes: int) -> Buffer:
        """A new storage buffer of exactly `nbytes` (1..maxStorageBufferRange) bytes."""
        self._live()
        nbytes = check_size(nbytes, self.caps.max_storage_buffer_range)
        with self.calls:
            buf = Buffer(self, nbytes)
            self.buffers.add(buf)
        return buf

    def pipeline(self, spirv: bytes, *, name: str, required_subgroup_size: int | None = None,
                 full_subgroups: bool = False) -> Kernel:
        """The Kernel for this SPIR-V and these options; the same object on a repeated request."""
        self._live()
        with self.calls:
            return build(self, spirv, name=name, required_subgroup_size=required_subgroup_size,
                         full_subgroups=full_subgroups)

    def drop_pipeline(self, kernel: Kernel) -> bool:
        """Destroy a kernel and forget it unless an open sequence records it (then keep it and
        return False); a later pipeline() call builds it again from the pipeline cache. The
        tuner drops each candidate after timing it: with 150 more pipelines alive, NVIDIA's
        driver ran every kernel about 2x slower. A thread that still holds the kernel gets
        ClosedError from its next launch or sequence."""
        self._live()
        with self.calls, self.registry_lock:
            if any(kernel in seq.kernels for seq in self.sequences if not seq.closed):
                return False
            if self.kernels.get(kernel.key) is kernel:
                del self.kernels[kernel.key]
            with self.launcher.lock:  # no one-shot launch of it is in progress, nor starts
                kernel.close()
        return True

    def sequence(self, steps: Iterable[Step], *, timed: bool = True) -> Sequence:
        """Record (kernel, buffers, push, groups[, joins_previous]) steps once, for run() to
        resubmit; a step that joins the one before runs beside it, without a barrier (Sequence)."""
        self._live()
        # Checked, recorded and registered under the lock, so a buffer closed meanwhile either
        # fails the check or finds the sequence registered (and waits for its runs).
        with self.calls, self.registry_lock:
            seq = Sequence(self, steps, timed=timed)
            self.sequences.add(seq)
        return seq

    @property
    def staging(self) -> Staging:
        if self._staging is None:
            with self.registry_lock:
                if self._staging is None:
                    self._staging = Staging(self)
        return self._staging

    def settle(self, buffer: Buffer | None = None) -> None:
        """Wait for the runs in flight of the sequences that bind `buffer` (of every sequence
        when None), whichever thread started them, so the host may touch it."""
        for seq in list(self.in_flight):
            if buffer is None or buffer.serial in seq.serials:
                seq.collect()

    def retire(self, buf: Buffer) -> None:
        """Forget `buf`, which its close() has marked closed, once nothing can use it any more: a
        sequence being made (which may bind it) is made, no one-shot launch is in progress, and
        the sequences that bind it have no run in flight. Launches and runs that start later
        check the mark and raise ClosedError."""
        with self.registry_lock:
            self.forget(buf)
            binders = [seq for seq in self.sequences if buf.serial in seq.serials]
        self.launcher.wait_out()
        for seq in binders:
            # Under its slot's lock: a run that passed its check before the mark is waited for,
            # even one not yet in in_flight.
            seq.collect()

    def forget(self, buf: Buffer) -> None:
        """Stop tracking `buf`: Device.close() will not destroy it."""
        self.buffers.discard(buf)

    def wait_idle(self) -> None:
        with self.calls, self.queue_lock:
            vk.check("vkDeviceWaitIdle", vk.lib.vkDeviceWaitIdle(self.handle))

    # --- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Refuse new calls (they raise ClosedError), wait for the calls running in other
        threads, wait idle, save the pipeline cache and destroy everything in reverse order of
        creation. Calling it again, from any thread, is harmless."""
        with self._close_lock:
            if self._destroyed:
                return
            self.calls.shut()
            self._destroy()
            self._destroyed = True

    def _destroy(self) -> None:
        if self.handle is not None:
            with self.queue_lock:
                vk.lib.vkDeviceWaitIdle(self.handle)  # a lost device still gets its objects destroyed
            for seq in list(self.sequences):
                seq.close()
            for kernel in self.kernels.values():
                kernel.close()
            if self.pipeline_cache is not None:
                self.pipeline_cache.save()
            for part in (self.pipeline_cache, self.launcher, self._staging, self.descriptor_sets, self.layouts):
                if part is not None:
                    part.close()
            self.pool.clear()
            for buf in list(self.buffers):
                buf._destroy()
            handles.release("Device", vk.lib.vkDestroyDevice, self.handle, vk.ffi.NULL)
        if self.instance is not None:
            handles.release("Instance", vk.destroy_instance, self.instance)
        self.sequences.clear()
        self.kernels.clear()
        self.buffers.clear()
        self.in_flight.clear()
        self.set_cache = self.launcher = self._staging = self.dummy = None
        self.handle = self.instance = self.queue = None

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name = self.caps.name if hasattr(self, "caps") else "?"
        return f"Device({name!r}{', closed' if self.closed else ''})"
