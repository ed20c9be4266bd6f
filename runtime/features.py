"""The device features kgen's kernels may use, and how to enable those a device offers.

One table names each feature, the struct that holds it and (through devices._FEATURES and the
links below) the Vulkan version or extension that lets the struct be chained. Device creation
queries the table's structs, then enables the intersection of wanted and supported bits in a
second, fresh chain: a feature is never enabled that the device did not report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import vulkan

from . import vk
from .devices import _FEATURES, COOPMAT, _Link, _query

BFLOAT16 = "VK_KHR_shader_bfloat16"
# The driver's statistics (registers, spills, shared memory) of each compiled pipeline.
EXECUTABLE_PROPERTIES = "VK_KHR_pipeline_executable_properties"
PIPELINE_STATISTICS = "pipelineExecutableInfo"  # its feature bit

LINKS: dict[str, _Link] = {
    **_FEATURES,
    "memory_model": _Link("VkPhysicalDeviceVulkanMemoryModelFeatures",
                          vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_MEMORY_MODEL_FEATURES, (1, 2),
                          "VK_KHR_vulkan_memory_model"),
    "subgroup_types": _Link("VkPhysicalDeviceShaderSubgroupExtendedTypesFeatures",
                            vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_SUBGROUP_EXTENDED_TYPES_FEATURES,
                            (1, 2), "VK_KHR_shader_subgroup_extended_types"),
    "coopmat": _Link("VkPhysicalDeviceCooperativeMatrixFeaturesKHR",
                     vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_COOPERATIVE_MATRIX_FEATURES_KHR,
                     extension=COOPMAT),
    "executable_properties": _Link("VkPhysicalDevicePipelineExecutablePropertiesFeaturesKHR",
                                   vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PIPELINE_EXECUTABLE_PROPERTIES_FEATURES_KHR,
                                   extension=EXECUTABLE_PROPERTIES),
}


@dataclass(frozen=True)
class Feature:
    """One VkBool32: `name` as the spec spells it; `link` keys LINKS (None: the core
    VkPhysicalDeviceFeatures inside Features2); `index` picks an element of an array member
    (the hand-written coopmat2 struct keeps its seven bits in `f`); `on_request`: a debugging
    feature, enabled only when the device is opened asking for it by name."""

    name: str
    link: str | None
    member: str
    index: int | None = None
    on_request: bool = False


def _named(link: str, *names: str) -> tuple[Feature, ...]:
    return tuple(Feature(n, link, n) for n in names)


_COOPMAT2_BITS = ("cooperativeMatrixWorkgroupScope", "cooperativeMatrixFlexibleDimensions",
                  "cooperativeMatrixReductions", "cooperativeMatrixConversions",
                  "cooperativeMatrixPerElementOperations", "cooperativeMatrixTensorAddressing",
                  "cooperativeMatrixBlockLoads")

FEATURES: tuple[Feature, ...] = (
    Feature("shaderInt16", None, "shaderInt16"),
    *_named("float16_int8", "shaderFloat16", "shaderInt8"),
    *_named("storage16", "storageBuffer16BitAccess", "uniformAndStorageBuffer16BitAccess"),
    *_named("storage8", "storageBuffer8BitAccess"),
    *_named("size_control", "subgroupSizeControl", "computeFullSubgroups"),
    *_named("memory_model", "vulkanMemoryModel", "vulkanMemoryModelDeviceScope"),
    *_named("address", "bufferDeviceAddress"),
    *_named("subgroup_types", "shaderSubgroupExtendedTypes"),
    *_named("dot", "shaderIntegerDotProduct"),
    *_named("coopmat", "cooperativeMatrix"),
    *(Feature(name, "coopmat2", "f", i) for i, name in enumerate(_COOPMAT2_BITS)),
    *_named("bfloat16", "shaderBFloat16Type", "shaderBFloat16DotProduct", "shaderBFloat16CooperativeMatrix"),
    # Drivers may keep per-pipeline compiler data once this is on: the tuner's devices go without.
    Feature(PIPELINE_STATISTICS, "executable_properties", PIPELINE_STATISTICS, on_request=True),
)


def _struct(head: Any, nodes: dict[str, Any], f: Feature) -> Any:
    return head.features if f.link is None else nodes[f.link]


def _get(struct: Any, f: Feature) -> bool:
    value = getattr(struct, f.member)
    return bool(value[f.index] if f.index is not None else value)


def _set(struct: Any, f: Feature) -> None:
    if f.index is not None:
        getattr(struct, f.member)[f.index] = 1
    else:
        setattr(struct, f.member, 1)


@dataclass
class EnableChain:
    """A VkPhysicalDeviceFeatures2 chain for VkDeviceCreateInfo.pNext. `keep` holds every struct
    of the chain: it must stay referenced until vkCreateDevice returns."""

    head: Any
    keep: list[Any]
    extensions: tuple[str, ...]
    enabled: frozenset[str]


def enable_chain(physical_device: Any, *, api: tuple[int, int], extensions: tuple[str, ...],
                 requested: frozenset[str] = frozenset()) -> EnableChain:
    """Query every struct this device may be asked about at `api` (the version the device is
    created for), then build the chain that enables each supported feature of FEATURES; an
    on_request feature only when `requested` names it."""
    supported = _query(vk.lib.vkGetPhysicalDeviceFeatures2, "VkPhysicalDeviceFeatures2",
                       vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, LINKS,
                       physical_device=physical_device, api=api, extensions=extensions)
    on = [f for f in FEATURES if (not f.on_request or f.name in requested)
          and (f.link is None or f.link in supported.nodes)
          and _get(_struct(supported.head, supported.nodes, f), f)]
    used = list(dict.fromkeys(f.link for f in on if f.link is not None))
    head = vk.new_struct(vk.ffi, "VkPhysicalDeviceFeatures2", vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2)
    nodes = {key: vk.new_struct(LINKS[key].struct_ffi, LINKS[key].ctype, LINKS[key].stype) for key in used}
    for f in on:
        _set(_struct(head, nodes, f), f)
    vk.link_chain([(vk.ffi, head)] + [(LINKS[key].struct_ffi, nodes[key]) for key in used])
    # A struct's extension is enabled unless the struct is core at `api`.
    needed = tuple(LINKS[k].extension for k in used
                   if not (LINKS[k].core is not None and api >= LINKS[k].core) and LINKS[k].extension)
    return EnableChain(head, [head, *nodes.values()], needed, frozenset(f.name for f in on))
