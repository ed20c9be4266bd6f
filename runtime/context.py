"""Device: one Vulkan device opened for kgen, and the owner of everything made on it.

Opening creates the instance, the logical device (one compute queue, every feature of
runtime.features the device supports), the command pool, the shared layouts, the pipeline cache,
a dummy buffer and the one-shot launch path. close() waits idle and destroys it all in reverse
order, including the buffers, kernels and sequences made through it; those objects hold only a
weak link back, so closing them afterwards is harmless. Nothing relies on __del__.
"""
from __future__ import annotations

from collections.abc import Iterable
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


class Device:
    """A Vulkan device for kgen: Device(index=None) picks kgen.select.default_index (KGEN_DEVICE).

    capture_statistics=True asks the driver to keep each pipeline's statistics for
    Kernel.statistics() (VK_KHR_pipeline_executable_properties, where the device offers it). It
    is device-wide, so no kernel cache mixes pipelines made with and without it, and the
    pipeline cache file is neither read nor written: the statistics come from a real compile.

    One thread at a time: the one-shot launch path re-records a single command buffer."""

    def __init__(self, index: int | None = None, *, capture_statistics: bool = False):
        self.closed = False
        self.capture_statistics = capture_statistics
        self.instance = self.physical_device = self.handle = self.queue = self.command_pool = None
        self.layouts = self.descriptor_sets = self.set_cache = self.pipeline_cache = None
        self.dummy = self.launcher = self._staging = self.memory_types = None
        self.enabled_features: frozenset[str] = frozenset()
        self.extensions: tuple[str, ...] = ()
        self.buffers: set[Buffer] = set()
        self.kernels: dict[Any, Kernel] = {}
        self.sequences: set[Sequence] = set()
        self.in_flight: set[Sequence] = set()
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
        self.command_pool = self._create_command_pool()
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

    def _create_command_pool(self) -> Any:
        info = vk.ffi.new("VkCommandPoolCreateInfo*", {
            "sType": vulkan.VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO, "queueFamilyIndex": self.queue_family,
            "flags": vulkan.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT})
        return handles.create("CommandPool", "vkCreateCommandPool", vk.lib.vkCreateCommandPool,
                              self.handle, info, vk.ffi.NULL)

    # --- what callers use ----------------------------------------------------------------------
    def _live(self) -> None:
        if self.closed:
            raise ClosedError(f"device {self.caps.name!r}" if hasattr(self, "caps") else "device")

    def buffer(self, nbytes: int) -> Buffer:
        """A new storage buffer of exactly `nbytes` (1..maxStorageBufferRange) bytes."""
        self._live()
        nbytes = check_size(nbytes, self.caps.max_storage_buffer_range)
        buf = Buffer(self, nbytes)
        self.buffers.add(buf)
        return buf

    def pipeline(self, spirv: bytes, *, name: str, required_subgroup_size: int | None = None,
                 full_subgroups: bool = False) -> Kernel:
        """The Kernel for this SPIR-V and these options; the same object on a repeated request."""
        self._live()
        return build(self, spirv, name=name, required_subgroup_size=required_subgroup_size,
                     full_subgroups=full_subgroups)

    def drop_pipeline(self, kernel: Kernel) -> bool:
        """Destroy a kernel and forget it unless an open sequence records it (then keep it and
        return False); a later pipeline() call builds it again from the pipeline cache. The
        tuner drops each candidate after timing it: with 150 more pipelines alive, NVIDIA's
        driver ran every kernel about 2x slower."""
        self._live()
        if any(kernel in seq.kernels for seq in self.sequences if not seq.closed):
            return False
        self.settle()
        if self.kernels.get(kernel.key) is kernel:
            del self.kernels[kernel.key]
        kernel.close()
        return True

    def sequence(self, steps: Iterable[Step], *, timed: bool = True) -> Sequence:
        """Record (kernel, buffers, push, groups[, joins_previous]) steps once, for run() to
        resubmit; a step that joins the one before runs beside it, without a barrier (Sequence)."""
        self._live()
        seq = Sequence(self, steps, timed=timed)
        self.sequences.add(seq)
        return seq

    @property
    def staging(self) -> Staging:
        if self._staging is None:
            self._staging = Staging(self)
        return self._staging

    def settle(self) -> None:
        """Wait for sequences still running, so the host may touch their buffers."""
        for seq in list(self.in_flight):
            seq.wait()

    def forget(self, buf: Buffer) -> None:
        self.buffers.discard(buf)

    def wait_idle(self) -> None:
        self._live()
        vk.check("vkDeviceWaitIdle", vk.lib.vkDeviceWaitIdle(self.handle))

    # --- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Wait idle, save the pipeline cache, destroy everything in reverse order of creation."""
        if self.closed:
            return
        self.closed = True
        if self.handle is not None:
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
            if self.command_pool is not None:
                handles.release("CommandPool", vk.lib.vkDestroyCommandPool, self.handle, self.command_pool, vk.ffi.NULL)
            handles.release("Device", vk.lib.vkDestroyDevice, self.handle, vk.ffi.NULL)
        if self.instance is not None:
            handles.release("Instance", vk.destroy_instance, self.instance)
        self.sequences.clear()
        self.kernels.clear()
        self.buffers.clear()
        self.in_flight.clear()
        self.set_cache = self.launcher = self._staging = self.dummy = None
        self.handle = self.instance = self.queue = self.command_pool = None

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name = self.caps.name if hasattr(self, "caps") else "?"
        return f"Device({name!r}{', closed' if self.closed else ''})"
