"""The driver's statistics of a compiled pipeline (VK_KHR_pipeline_executable_properties):
registers, spills, shared memory and whatever else the driver reports, by the driver's names.

Only pipelines created with VK_PIPELINE_CREATE_CAPTURE_STATISTICS_BIT_KHR carry them, and only a
device that enabled pipelineExecutableInfo may set that flag: Device(capture_statistics=True).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import vulkan

from . import vk
from .errors import StatisticsUnavailable
from .features import EXECUTABLE_PROPERTIES, PIPELINE_STATISTICS

Statistic = bool | int | float
CAPTURE_STATISTICS = vulkan.VK_PIPELINE_CREATE_CAPTURE_STATISTICS_BIT_KHR
_VALUE = {  # VkPipelineExecutableStatisticFormatKHR -> the union member that holds the value
    vulkan.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_BOOL32_KHR: lambda v: bool(v.b32),
    vulkan.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_INT64_KHR: lambda v: int(v.i64),
    vulkan.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_UINT64_KHR: lambda v: int(v.u64),
    vulkan.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_FLOAT64_KHR: lambda v: float(v.f64),
}


def statistics_problem(dev: Any) -> str | None:
    """Why the pipelines of `dev` carry no statistics, or None."""
    caps = dev.caps
    if EXECUTABLE_PROPERTIES not in caps.extensions:
        return f"{caps.name} does not offer {EXECUTABLE_PROPERTIES}"
    if not dev.capture_statistics:
        return "the device was opened without capture_statistics: use Device(capture_statistics=True)"
    if PIPELINE_STATISTICS not in dev.enabled_features:
        return f"{caps.name} lists {EXECUTABLE_PROPERTIES} but reports {PIPELINE_STATISTICS} unsupported"
    return None


def capture_flags(dev: Any) -> int:
    """The VkPipelineCreateFlags a pipeline of `dev` needs for statistics() to work."""
    return CAPTURE_STATISTICS if statistics_problem(dev) is None else 0


def statistic(s: Any) -> tuple[str, Statistic] | None:
    """One VkPipelineExecutableStatisticKHR as (name, value); None for a format this code does
    not know, which is left out rather than misread."""
    read = _VALUE.get(s.format)
    return None if read is None else (vk.ffi.string(s.name).decode("utf-8", "replace"), read(s.value))


def _enumerate(fn: Any, call: str, args: tuple, ctype: str, stype: int, read: Callable[[Any], Any]) -> list:
    """The count-then-fill pattern; each element is read while the array is still alive."""
    count = vk.ffi.new("uint32_t*")
    vk.check(call, fn(*args, count, vk.ffi.NULL))
    # The spec wants sType set in every output element; a zeroed array leaves it 0.
    out = vk.ffi.new(f"{ctype}[]", [{"sType": stype}] * count[0])
    vk.check(call, fn(*args, count, out))
    return [read(x) for x in out[0:count[0]]]


def read_statistics(device: Any, pipeline: Any, *, kernel: str) -> dict[str, Statistic]:
    """{name: value} of the compute executable of `pipeline`, made on `device` for the kernel
    named `kernel`. The caller has checked statistics_problem(): the two functions exist only
    where the extension was enabled."""
    pipeline_info = vk.ffi.new("VkPipelineInfoKHR*", {
        "sType": vulkan.VK_STRUCTURE_TYPE_PIPELINE_INFO_KHR, "pipeline": pipeline})
    call = "vkGetPipelineExecutablePropertiesKHR"
    stages = _enumerate(vk.device_proc(device, call), f"{call} for kernel {kernel!r}", (device, pipeline_info),
                        "VkPipelineExecutablePropertiesKHR",
                        vulkan.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_PROPERTIES_KHR, lambda p: p.stages)
    index = next((i for i, s in enumerate(stages) if s & vulkan.VK_SHADER_STAGE_COMPUTE_BIT), None)
    if index is None:
        raise StatisticsUnavailable(kernel, f"the driver reported {len(stages)} executable(s), none for compute")
    executable = vk.ffi.new("VkPipelineExecutableInfoKHR*", {
        "sType": vulkan.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_INFO_KHR, "pipeline": pipeline,
        "executableIndex": index})
    call = "vkGetPipelineExecutableStatisticsKHR"
    found = _enumerate(vk.device_proc(device, call), f"{call} for kernel {kernel!r}", (device, executable),
                       "VkPipelineExecutableStatisticKHR", vulkan.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_STATISTIC_KHR,
                       statistic)
    return dict(s for s in found if s is not None)
