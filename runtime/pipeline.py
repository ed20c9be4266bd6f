"""Compute pipelines: SPIR-V -> shader module -> pipeline of the shared abi layout, and the
Kernel object that launches one with STYLE's signature."""
from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass
from typing import Any

import vulkan

from kgen.compile import looks_like_spirv
from kgen.errors import UnsupportedVariant

from . import handles
from .errors import ClosedError, InvalidArgument, StatisticsUnavailable
from .launch import Buffers, check_groups, check_push, resolve
from .pipeline_stats import Statistic, capture_flags, read_statistics, statistics_problem
from .vk import VulkanError, ffi, lib

# VK_PIPELINE_SHADER_STAGE_CREATE_REQUIRE_FULL_SUBGROUPS_BIT: the binding's name for it is None.
REQUIRE_FULL_SUBGROUPS = 0x2
# VK_PIPELINE_CREATE_DISPATCH_BASE_BIT (Vulkan 1.1): the binding's names for it are None.
DISPATCH_BASE = 0x10
_ENTRY = ffi.new("char[]", b"main")  # module-level: the pointer the driver sees never dangles


@dataclass(frozen=True)
class KernelKey:
    """What makes two pipelines the same: the code and the creation options (not the name).
    Capturing statistics is not among them: it is fixed per Device, as is the kernel cache."""

    spirv_sha256: str
    required_subgroup_size: int | None
    full_subgroups: bool


def subgroup_problem(dev: Any, required: int | None, full: bool) -> str | None:
    """Why the device cannot honour the subgroup options, or None."""
    caps, enabled = dev.caps, dev.enabled_features
    if full and "computeFullSubgroups" not in enabled:
        return "full_subgroups needs computeFullSubgroups, which this device lacks"
    if required is None:
        return None
    if "subgroupSizeControl" not in enabled:
        if caps.min_subgroup_size == caps.max_subgroup_size == required:
            return None  # the one size the device has anyway
        return f"required_subgroup_size={required} needs subgroupSizeControl, which this device lacks"
    if not (caps.min_subgroup_size <= required <= caps.max_subgroup_size and required & (required - 1) == 0):
        return (f"required_subgroup_size={required} is not a power of two in "
                f"{caps.min_subgroup_size}..{caps.max_subgroup_size}")
    return None


class Kernel:
    """One compute pipeline. Call it as kernel(buffers, push, groups, timed=True)."""

    def __init__(self, dev: Any, spirv: bytes, key: KernelKey, *, name: str):
        self.name, self.key = name, key
        self._device = weakref.ref(dev)
        self._dev = dev.handle
        self.layout = dev.layouts.pipeline_layout
        self.module = self.handle = self._based = None
        try:
            self._create(dev, spirv)
        except BaseException:
            self.close()
            raise

    def _create(self, dev: Any, spirv: bytes) -> None:
        code = ffi.from_buffer(spirv)
        info = ffi.new("VkShaderModuleCreateInfo*", {
            "sType": vulkan.VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, "codeSize": len(spirv),
            "pCode": ffi.cast("uint32_t*", code)})
        self.module = self._named(handles.create, "ShaderModule", "vkCreateShaderModule",
                                  lib.vkCreateShaderModule, self._dev, info, ffi.NULL)
        self.handle = self._pipeline(dev, 0)

    def _pipeline(self, dev: Any, flags: int) -> Any:
        """A compute pipeline of the module, with creation `flags` beside the statistics flag."""
        size_info = ffi.NULL
        if self.key.required_subgroup_size is not None and "subgroupSizeControl" in dev.enabled_features:
            size_info = ffi.new("VkPipelineShaderStageRequiredSubgroupSizeCreateInfo*", {
                "sType": vulkan.VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_REQUIRED_SUBGROUP_SIZE_CREATE_INFO,
                "requiredSubgroupSize": self.key.required_subgroup_size})
        stage = {"sType": vulkan.VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO, "pNext": size_info,
                 "flags": REQUIRE_FULL_SUBGROUPS if self.key.full_subgroups else 0,
                 "stage": vulkan.VK_SHADER_STAGE_COMPUTE_BIT, "module": self.module, "pName": _ENTRY}
        info = ffi.new("VkComputePipelineCreateInfo*", {
            "sType": vulkan.VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO, "flags": capture_flags(dev) | flags,
            "stage": stage, "layout": self.layout, "basePipelineIndex": -1})
        return self._named(handles.create, "Pipeline", "vkCreateComputePipelines",
                           lib.vkCreateComputePipelines, self._dev, dev.pipeline_cache.handle, 1,
                           info, ffi.NULL)

    def dispatch_base_handle(self) -> Any:
        """The same code as a pipeline created with VK_PIPELINE_CREATE_DISPATCH_BASE_BIT, which
        vkCmdDispatchBase needs for a nonzero base; made on first use (the caller holds the
        device's registry_lock, as Device.sequence does). `handle` stays the pipeline without
        it, so a kernel dispatched whole runs the pipeline it was tuned with."""
        if self._based is None:
            self._based = self._pipeline(self._live_device(), DISPATCH_BASE)
        return self._based

    def _named(self, create: Any, kind: str, call: str, *args: Any) -> Any:
        """create(...), with the kernel's name in the error: "which kernel" is the first question."""
        try:
            return create(kind, call, *args)
        except VulkanError as exc:
            raise VulkanError(f"{call} for kernel {self.name!r}", exc.result) from None

    @property
    def device(self) -> Any:
        return self._device()

    def _live_device(self) -> Any:
        dev = self._device()
        if self.handle is None or dev is None or dev.closed:
            raise ClosedError(f"kernel {self.name!r}")
        return dev

    def statistics(self) -> dict[str, Statistic]:
        """The driver's statistics of this kernel, by the driver's names (NVIDIA 580: "Register
        Count", "Binary Size", "Stack Size", "Local Memory Size", "Shared Memory Size").
        StatisticsUnavailable says what is missing when the device was not opened with
        capture_statistics=True or lacks the extension."""
        dev = self._live_device()
        if (reason := statistics_problem(dev)) is not None:
            raise StatisticsUnavailable(self.name, reason)
        with dev.calls, dev.registry_lock:  # drop_pipeline() destroys kernels under that lock
            if self.handle is None:
                raise ClosedError(f"kernel {self.name!r}")
            return read_statistics(self._dev, self.handle, kernel=self.name)

    def __call__(self, buffers: Buffers, push: bytes, groups: tuple[int, int, int],
                 timed: bool = True) -> float | None:
        """Bind, push, dispatch and wait; GPU microseconds when timed (None when the queue has no
        timestamps). Bindings not given are bound to the device's dummy buffer."""
        dev = self._live_device()
        where = f"kernel {self.name!r}"
        push_data = check_push(where, push)
        groups = check_groups(where, groups, dev.caps.max_workgroup_count)
        bound = resolve(dev, where, buffers)
        with dev.calls:
            return dev.launcher.launch(self, bound, push_data, groups, timed)

    def close(self) -> None:
        """Called by Device.close(); a Kernel lives as long as its device's in-process cache."""
        for handle in (self.handle, self._based):
            if handle is not None:
                handles.release("Pipeline", lib.vkDestroyPipeline, self._dev, handle, ffi.NULL)
        if self.module is not None:
            handles.release("ShaderModule", lib.vkDestroyShaderModule, self._dev, self.module, ffi.NULL)
        self.handle = self.module = self._based = None

    def __repr__(self) -> str:
        return f"Kernel({self.name!r}{', closed' if self.handle is None else ''})"


def build(dev: Any, spirv: bytes, *, name: str, required_subgroup_size: int | None,
          full_subgroups: bool) -> Kernel:
    """The device's Kernel for this code and these options, created on first request."""
    spirv = bytes(spirv)
    if not looks_like_spirv(spirv):   # a malformed module can crash a driver rather than fail
        raise InvalidArgument(f"Device.pipeline({name!r})", "spirv", f"{len(spirv)} bytes starting "
                              f"{spirv[:4].hex() or 'with nothing'}", "a whole SPIR-V module: a multiple of 4 "
                              "bytes starting 03022307, its instructions ending with OpFunctionEnd",
                              "pass kgen.compile.compile_source(...).spirv")
    if (reason := subgroup_problem(dev, required_subgroup_size, full_subgroups)) is not None:
        raise UnsupportedVariant(name, reason)
    key = KernelKey(hashlib.sha256(spirv).hexdigest(), required_subgroup_size, bool(full_subgroups))
    kernel = dev.kernels.get(key)
    if kernel is None:
        made = Kernel(dev, spirv, key, name=name)   # outside the lock: compiles in threads overlap
        with dev.registry_lock:
            kernel = dev.kernels.setdefault(key, made)
        if kernel is not made:  # another thread made the same pipeline meanwhile
            made.close()
    return kernel
