"""Fills `kgen.caps.Caps` from the Vulkan physical devices of this machine.

A struct joins a vkGetPhysicalDevice{Properties,Features}2 pNext chain only when the device
reports the Vulkan version that made it core or lists its extension: chaining anything else is
invalid usage, and drivers are free to crash on it. Extension functions follow the same rule.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cffi
import vulkan

from kgen.caps import COMPONENT_TYPES, SCOPES, Caps, CoopMat2Features, CoopMatShape
from kgen.runtime import vk

COOPMAT = "VK_KHR_cooperative_matrix"
COOPMAT2 = "VK_NV_cooperative_matrix2"
DEVICE_TYPES = {
    vulkan.VK_PHYSICAL_DEVICE_TYPE_OTHER: "other",
    vulkan.VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: "integrated",
    vulkan.VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: "discrete",
    vulkan.VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: "virtual",
    vulkan.VK_PHYSICAL_DEVICE_TYPE_CPU: "cpu",
}


@dataclass(frozen=True)
class _Link:
    """One struct of a pNext chain, and what the device must offer before it may be chained."""

    ctype: str
    stype: int
    core: tuple[int, int] | None = None  # the Vulkan version that made the struct core
    extension: str | None = None
    struct_ffi: cffi.FFI = vk.ffi

    def wanted(self, api: tuple[int, int], extensions: tuple[str, ...]) -> bool:
        return (self.core is not None and api >= self.core) or self.extension in extensions


_PROPERTIES = {
    "driver": _Link("VkPhysicalDeviceDriverProperties",
                    vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES, (1, 2),
                    "VK_KHR_driver_properties"),
    "subgroup": _Link("VkPhysicalDeviceSubgroupProperties",
                      vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES, (1, 1)),
    "size_control": _Link("VkPhysicalDeviceSubgroupSizeControlProperties",
                          vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_PROPERTIES, (1, 3),
                          "VK_EXT_subgroup_size_control"),
    "coopmat2": _Link("Coopmat2Properties", vk.STYPE_COOPMAT2_PROPERTIES, extension=COOPMAT2,
                      struct_ffi=vk.ext_ffi),
}
_FEATURES = {
    "float16_int8": _Link("VkPhysicalDeviceShaderFloat16Int8Features",
                          vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES, (1, 2),
                          "VK_KHR_shader_float16_int8"),
    "storage16": _Link("VkPhysicalDevice16BitStorageFeatures",
                       vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES, (1, 1),
                       "VK_KHR_16bit_storage"),
    "storage8": _Link("VkPhysicalDevice8BitStorageFeatures",
                      vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES, (1, 2),
                      "VK_KHR_8bit_storage"),
    "address": _Link("VkPhysicalDeviceBufferDeviceAddressFeatures",
                     vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_BUFFER_DEVICE_ADDRESS_FEATURES, (1, 2),
                     "VK_KHR_buffer_device_address"),
    "dot": _Link("VkPhysicalDeviceShaderIntegerDotProductFeatures",
                 vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES, (1, 3),
                 "VK_KHR_shader_integer_dot_product"),
    "size_control": _Link("VkPhysicalDeviceSubgroupSizeControlFeatures",
                          vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_SIZE_CONTROL_FEATURES, (1, 3),
                          "VK_EXT_subgroup_size_control"),
    "bfloat16": _Link("Bfloat16Features", vk.STYPE_BFLOAT16_FEATURES, extension="VK_KHR_shader_bfloat16",
                      struct_ffi=vk.ext_ffi),
    "coopmat2": _Link("Coopmat2Features", vk.STYPE_COOPMAT2_FEATURES, extension=COOPMAT2,
                      struct_ffi=vk.ext_ffi),
}


@dataclass
class _Chain:
    """A filled Properties2/Features2 struct and the structs chained to it, by key."""

    head: Any
    nodes: dict[str, Any]

    def get(self, key: str, member: str, default: Any = 0) -> Any:
        """A member of a chained struct, or `default` when the device could not be asked."""
        node = self.nodes.get(key)
        return default if node is None else getattr(node, member)

    def text(self, key: str, member: str) -> str:
        """A char[] member as str; "" when the device could not be asked."""
        node = self.nodes.get(key)
        return "" if node is None else _string(getattr(node, member))


def _query(getter: Callable[[Any, Any], None], head_ctype: str, head_stype: int, links: dict[str, _Link], *,
           physical_device: Any, api: tuple[int, int], extensions: tuple[str, ...]) -> _Chain:
    """Call `getter` (vkGetPhysicalDevice{Properties,Features}2) with every link the device offers."""
    head = vk.new_struct(vk.ffi, head_ctype, head_stype)
    wanted = {key: link for key, link in links.items() if link.wanted(api, extensions)}
    nodes = {key: vk.new_struct(link.struct_ffi, link.ctype, link.stype) for key, link in wanted.items()}
    vk.link_chain([(vk.ffi, head)] + [(wanted[key].struct_ffi, node) for key, node in nodes.items()])
    getter(physical_device, head)
    return _Chain(head, nodes)


def _string(chars: Any) -> str:
    return vk.ffi.string(chars).decode("utf-8", "replace")


def _version_parts(v: int) -> tuple[int, int, int]:
    return (v >> 22) & 0x7F, (v >> 12) & 0x3FF, v & 0xFFF  # VK_API_VERSION_MAJOR/MINOR/PATCH


def _enum_name(table: dict[int, str], value: int) -> str:
    return table.get(value, f"unknown({value})")


def _device_extensions(physical_device: Any) -> tuple[str, ...]:
    found = vk.call(vulkan.vkEnumerateDeviceExtensionProperties, physical_device, None)
    return tuple(sorted(e.extensionName for e in found))


def _api_version(physical_device: Any) -> tuple[int, int]:
    props = vk.ffi.new("VkPhysicalDeviceProperties*")
    vk.lib.vkGetPhysicalDeviceProperties(physical_device, props)
    return _version_parts(props.apiVersion)[:2]


def _compute_timestamp_bits(physical_device: Any) -> int:
    """timestampValidBits of the first queue family that can run compute; 0 when none can."""
    families = vulkan.vkGetPhysicalDeviceQueueFamilyProperties(physical_device)
    return next((f.timestampValidBits for f in families if f.queueFlags & vulkan.VK_QUEUE_COMPUTE_BIT), 0)


def _coopmat_shapes(instance: Any, physical_device: Any) -> tuple[CoopMatShape, ...]:
    """Every VkCooperativeMatrixPropertiesKHR; only for a device that lists VK_KHR_cooperative_matrix."""
    name = "vkGetPhysicalDeviceCooperativeMatrixPropertiesKHR"
    fn = vk.instance_proc(instance, name)
    count = vk.ffi.new("uint32_t*")
    vk.check(name, fn(physical_device, count, vk.ffi.NULL))
    # The spec wants sType set in every output element; the binding's own wrapper leaves it 0.
    stype = vulkan.VK_STRUCTURE_TYPE_COOPERATIVE_MATRIX_PROPERTIES_KHR
    props = vk.ffi.new("VkCooperativeMatrixPropertiesKHR[]", [{"sType": stype}] * count[0])
    vk.check(name, fn(physical_device, count, props))
    return tuple(coopmat_shape(p) for p in props[0:count[0]])


def coopmat_shape(p: Any) -> CoopMatShape:
    """One VkCooperativeMatrixPropertiesKHR as a CoopMatShape; unknown enums read "unknown(<n>)"."""
    types = {field: _enum_name(COMPONENT_TYPES, getattr(p, member)) for field, member in
             (("a_type", "AType"), ("b_type", "BType"), ("c_type", "CType"), ("result_type", "ResultType"))}
    return CoopMatShape(m=p.MSize, n=p.NSize, k=p.KSize, saturating=bool(p.saturatingAccumulation),
                        scope=_enum_name(SCOPES, p.scope), **types)


def _coopmat2_features(features: _Chain) -> CoopMat2Features:
    node = features.nodes.get("coopmat2")
    # The struct's seven bits are in CoopMat2Features' field order.
    return CoopMat2Features(*(bool(bit) for bit in node.f)) if node is not None else CoopMat2Features()


def query_caps(instance: Any, physical_device: Any) -> Caps:
    """The Caps of one VkPhysicalDevice of `instance`."""
    extensions = _device_extensions(physical_device)
    api = _api_version(physical_device)
    offered = {"physical_device": physical_device, "api": api, "extensions": extensions}
    props = _query(vk.lib.vkGetPhysicalDeviceProperties2, "VkPhysicalDeviceProperties2",
                   vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, _PROPERTIES, **offered)
    feats = _query(vk.lib.vkGetPhysicalDeviceFeatures2, "VkPhysicalDeviceFeatures2",
                   vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, _FEATURES, **offered)
    p = props.head.properties
    limits = p.limits
    subgroup = props.get("subgroup", "subgroupSize")
    return Caps(
        name=_string(p.deviceName), vendor_id=p.vendorID, device_id=p.deviceID,
        device_type=DEVICE_TYPES.get(p.deviceType, "other"),
        driver_id=props.get("driver", "driverID"),
        driver_name=props.text("driver", "driverName"), driver_info=props.text("driver", "driverInfo"),
        driver_version=p.driverVersion, api_version=".".join(map(str, _version_parts(p.apiVersion))),
        pipeline_cache_uuid=bytes(vk.ffi.buffer(p.pipelineCacheUUID)).hex(),
        timestamp_period_ns=limits.timestampPeriod,
        timestamp_valid_bits=_compute_timestamp_bits(physical_device),
        subgroup_size=subgroup,
        min_subgroup_size=props.get("size_control", "minSubgroupSize", subgroup),
        max_subgroup_size=props.get("size_control", "maxSubgroupSize", subgroup),
        subgroup_size_control=bool(feats.get("size_control", "subgroupSizeControl")),
        compute_full_subgroups=bool(feats.get("size_control", "computeFullSubgroups")),
        max_shared_memory=limits.maxComputeSharedMemorySize,
        max_workgroup_invocations=limits.maxComputeWorkGroupInvocations,
        max_workgroup_size=tuple(limits.maxComputeWorkGroupSize),
        max_workgroup_count=tuple(limits.maxComputeWorkGroupCount),
        max_storage_buffer_range=limits.maxStorageBufferRange,
        max_push_constants_size=limits.maxPushConstantsSize,
        shader_float16=bool(feats.get("float16_int8", "shaderFloat16")),
        storage_buffer_16bit=bool(feats.get("storage16", "storageBuffer16BitAccess")),
        shader_int8=bool(feats.get("float16_int8", "shaderInt8")),
        storage_buffer_8bit=bool(feats.get("storage8", "storageBuffer8BitAccess")),
        shader_bfloat16=bool(feats.get("bfloat16", "shaderBFloat16Type")),
        integer_dot_product=bool(feats.get("dot", "shaderIntegerDotProduct")),
        buffer_device_address=bool(feats.get("address", "bufferDeviceAddress")),
        extensions=extensions,
        coopmat_shapes=_coopmat_shapes(instance, physical_device) if COOPMAT in extensions else (),
        coopmat2=_coopmat2_features(feats),
        coopmat2_max_workgroup_size=props.get("coopmat2", "workgroupScopeMaxWorkgroupSize"),
        coopmat2_flexible_max_dimension=props.get("coopmat2", "flexibleDimensionsMaxDimension"),
        coopmat2_reserved_shared_memory=props.get("coopmat2", "workgroupScopeReservedSharedMemory"),
    )


def list_devices() -> list[Caps]:
    """The Caps of every Vulkan device, in the loader's enumeration order. The instance made for
    the query is destroyed before returning."""
    with vk.open_instance() as instance:
        physical_devices = vk.call(vulkan.vkEnumeratePhysicalDevices, instance)
        return [query_caps(instance, pd) for pd in physical_devices]
