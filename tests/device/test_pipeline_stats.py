"""Driver pipeline statistics (VK_KHR_pipeline_executable_properties): Device(capture_statistics=True)
and Kernel.statistics().

The device tests take whichever branch the device allows: where it offers the extension (NVIDIA,
RADV) the statistics of a small kernel are read; where it does not (lavapipe) the error must name
the extension. The reading code itself is also checked against a fake driver, so lavapipe runs it.
"""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import vulkan

from kgen.compile import compile_source
from kgen.runtime import pipeline_stats, vk
from kgen.runtime.context import Device
from kgen.runtime.devices import _Chain
from kgen.runtime.errors import StatisticsUnavailable
from kgen.runtime.features import EXECUTABLE_PROPERTIES, LINKS, PIPELINE_STATISTICS, enable_chain
from kgen.runtime.pipeline_cache import cache_path

FILL = """#version 450
layout(local_size_x = 64) in;
layout(std430, binding = 5) writeonly buffer O { float o[]; };
layout(push_constant) uniform P { uint n; float value; } pc;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < pc.n) o[i] = pc.value * float(i);
}
"""
FORMATS = SimpleNamespace(
    bool32=vulkan.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_BOOL32_KHR,
    int64=vulkan.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_INT64_KHR,
    uint64=vulkan.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_UINT64_KHR,
    float64=vulkan.VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_FLOAT64_KHR)


@pytest.fixture(scope="module")
def spirv(cache_root) -> bytes:
    return compile_source(FILL, name="fill").spirv


# --- on the device -----------------------------------------------------------------------------

def test_statistics_of_a_small_kernel(spirv) -> None:
    with Device(capture_statistics=True) as dev:
        kernel = dev.pipeline(spirv, name="fill")
        if EXECUTABLE_PROPERTIES not in dev.caps.extensions:
            assert PIPELINE_STATISTICS not in dev.enabled_features
            assert EXECUTABLE_PROPERTIES not in dev.extensions
            missing = f"{re.escape(dev.caps.name)} does not offer {EXECUTABLE_PROPERTIES}"
            with pytest.raises(StatisticsUnavailable, match=missing):
                kernel.statistics()
            return
        assert PIPELINE_STATISTICS in dev.enabled_features
        stats = kernel.statistics()
        assert stats and all(isinstance(name, str) and name for name in stats)
        assert all(type(value) in (bool, int, float) for value in stats.values()), stats


def test_statistics_need_capture_statistics(spirv) -> None:
    with Device() as dev:
        assert PIPELINE_STATISTICS not in dev.enabled_features  # a debugging feature: never by default
        kernel = dev.pipeline(spirv, name="fill")
        # Where the device offers the extension, the missing piece is the option, and the
        # error says how to ask for it.
        missing = (EXECUTABLE_PROPERTIES if EXECUTABLE_PROPERTIES not in dev.caps.extensions
                   else r"capture_statistics.*Device\(capture_statistics=True\)")
        with pytest.raises(StatisticsUnavailable, match=f"kernel 'fill'.*{missing}") as info:
            kernel.statistics()
        assert info.value.kernel == "fill"


def test_a_closed_kernel_has_no_statistics(spirv) -> None:
    from kgen.runtime.errors import ClosedError
    with Device(capture_statistics=True) as dev:
        kernel = dev.pipeline(spirv, name="fill")
    with pytest.raises(ClosedError, match="kernel 'fill'"):
        kernel.statistics()


def test_capturing_device_leaves_the_pipeline_cache_file_alone(cache_root, spirv) -> None:
    with Device(capture_statistics=True) as dev:
        path = cache_path(dev.caps)
        path.unlink(missing_ok=True)
        dev.pipeline(spirv, name="fill")
        assert not dev.pipeline_cache.loaded
    assert not path.exists()
    with Device() as dev:  # the tuner's kind of device still saves it
        dev.pipeline(spirv, name="fill")
    assert path.exists()


# --- the on-request feature --------------------------------------------------------------------

def _offering_everything(getter, head_ctype, head_stype, links, **offered) -> _Chain:
    """A stand-in for devices._query: a device whose executable-properties struct says yes."""
    node = vk.new_struct(vk.ffi, LINKS["executable_properties"].ctype, LINKS["executable_properties"].stype)
    node.pipelineExecutableInfo = 1
    return _Chain(vk.new_struct(vk.ffi, head_ctype, head_stype), {"executable_properties": node})


def test_pipeline_statistics_are_enabled_only_on_request(monkeypatch) -> None:
    from kgen.runtime import features
    monkeypatch.setattr(features, "_query", _offering_everything)
    offered = {"physical_device": None, "api": (1, 3), "extensions": (EXECUTABLE_PROPERTIES,)}
    default = enable_chain(**offered)
    assert PIPELINE_STATISTICS not in default.enabled and EXECUTABLE_PROPERTIES not in default.extensions
    asked = enable_chain(**offered, requested=frozenset({PIPELINE_STATISTICS}))
    assert PIPELINE_STATISTICS in asked.enabled and EXECUTABLE_PROPERTIES in asked.extensions
    node = vk.ffi.cast(f"{LINKS['executable_properties'].ctype}*", asked.head.pNext)
    assert node.sType == LINKS["executable_properties"].stype and node.pipelineExecutableInfo == 1


def test_capture_flag_follows_the_device() -> None:
    def device(extensions=(EXECUTABLE_PROPERTIES,), capture=True, enabled=(PIPELINE_STATISTICS,)):
        return SimpleNamespace(caps=SimpleNamespace(name="gpu", extensions=extensions),
                               capture_statistics=capture, enabled_features=frozenset(enabled))

    assert pipeline_stats.capture_flags(device()) == vulkan.VK_PIPELINE_CREATE_CAPTURE_STATISTICS_BIT_KHR == 0x40
    for dev, reason in ((device(extensions=()), f"gpu does not offer {EXECUTABLE_PROPERTIES}"),
                        (device(capture=False), "opened without capture_statistics"),
                        (device(enabled=()), f"reports {PIPELINE_STATISTICS} unsupported")):
        assert pipeline_stats.capture_flags(dev) == 0
        assert reason in pipeline_stats.statistics_problem(dev)


# --- reading, against a fake driver ------------------------------------------------------------

class FakeDriver:
    """vkGetPipelineExecutable{Properties,Statistics}KHR for one pipeline with a vertex-only
    executable first, then the compute one; records what the caller passed."""

    STATISTICS = (("Register Count", FORMATS.int64, "i64", -7), ("Spilled", FORMATS.bool32, "b32", 1),
                  ("Shared Memory Size", FORMATS.uint64, "u64", 2**40), ("Occupancy", FORMATS.float64, "f64", 0.75),
                  ("From a later spec", 99, "u64", 5))

    def __init__(self) -> None:
        self.executable_index = None
        self.output_stypes: list[int] = []

    def executables(self, device, info, count, out):
        assert info.sType == vulkan.VK_STRUCTURE_TYPE_PIPELINE_INFO_KHR
        if out == vk.ffi.NULL:
            count[0] = 2
            return vulkan.VK_SUCCESS
        for i, stages in enumerate((vulkan.VK_SHADER_STAGE_VERTEX_BIT, vulkan.VK_SHADER_STAGE_COMPUTE_BIT)):
            self.output_stypes.append(out[i].sType)
            out[i].stages = stages
        return vulkan.VK_SUCCESS

    def statistics(self, device, info, count, out):
        assert info.sType == vulkan.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_INFO_KHR
        self.executable_index = info.executableIndex
        if out == vk.ffi.NULL:
            count[0] = len(self.STATISTICS)
            return vulkan.VK_SUCCESS
        for i, (name, fmt, member, value) in enumerate(self.STATISTICS):
            self.output_stypes.append(out[i].sType)
            out[i].name = name.encode()
            out[i].format = fmt
            setattr(out[i].value, member, value)
        return vulkan.VK_SUCCESS


def test_statistics_are_read_by_format(monkeypatch) -> None:
    driver = FakeDriver()
    procs = {"vkGetPipelineExecutablePropertiesKHR": driver.executables,
             "vkGetPipelineExecutableStatisticsKHR": driver.statistics}
    monkeypatch.setattr(vk, "device_proc", lambda device, name: procs[name])
    stats = pipeline_stats.read_statistics(None, vk.ffi.NULL, kernel="fake")
    assert stats == {"Register Count": -7, "Spilled": True, "Shared Memory Size": 2**40, "Occupancy": 0.75}
    assert [type(v) for v in stats.values()] == [int, bool, int, float]
    assert driver.executable_index == 1  # the compute executable, not the first one
    assert set(driver.output_stypes) == {vulkan.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_PROPERTIES_KHR,
                                         vulkan.VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_STATISTIC_KHR}


def test_no_compute_executable_is_named(monkeypatch) -> None:
    def graphics_only(device, info, count, out):
        count[0] = 1
        if out != vk.ffi.NULL:
            out[0].stages = vulkan.VK_SHADER_STAGE_FRAGMENT_BIT
        return vulkan.VK_SUCCESS

    monkeypatch.setattr(vk, "device_proc", lambda device, name: graphics_only)
    with pytest.raises(StatisticsUnavailable, match="kernel 'fake'.*1 executable.*none for compute"):
        pipeline_stats.read_statistics(None, vk.ffi.NULL, kernel="fake")


def test_a_driver_error_names_the_call_and_kernel(monkeypatch) -> None:
    monkeypatch.setattr(vk, "device_proc",
                        lambda device, name: lambda *args: vulkan.VK_ERROR_OUT_OF_HOST_MEMORY)
    with pytest.raises(vk.VulkanError, match="vkGetPipelineExecutablePropertiesKHR for kernel 'fake'"):
        pipeline_stats.read_statistics(None, vk.ffi.NULL, kernel="fake")
