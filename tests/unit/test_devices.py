"""The Caps record and its text form, without a Vulkan device: Caps round-trips, errors, pNext
plumbing for the structs lavapipe lacks. The device query itself (`runtime.devices` on lavapipe)
is tests/device/test_devices_query.py.
"""
from __future__ import annotations

import dataclasses
import json

import pytest

from kgen.caps import Caps, CoopMat2Features, CoopMatShape
from kgen.tools.devices_report import format_devices, format_shape


def hand_built() -> Caps:
    """A coopmat2-class device as a test or `--caps file.json` would describe it."""
    return Caps(
        name="Hand GPU", vendor_id=0x10DE, device_id=0x2330, device_type="discrete", driver_id=4,
        driver_name="NVIDIA", driver_info="580.0", driver_version=0x91000000, api_version="1.4.312",
        pipeline_cache_uuid="00" * 16, timestamp_period_ns=1.0, timestamp_valid_bits=64,
        subgroup_size=32, min_subgroup_size=32, max_subgroup_size=32, subgroup_size_control=True,
        compute_full_subgroups=True, max_shared_memory=49152, max_workgroup_invocations=1024,
        max_workgroup_size=(1024, 1024, 64), max_workgroup_count=(2**31 - 1, 65535, 65535),
        max_storage_buffer_range=2**32 - 1, max_push_constants_size=256, shader_float16=True,
        storage_buffer_16bit=True, shader_int8=True, storage_buffer_8bit=True, shader_bfloat16=True,
        integer_dot_product=True, buffer_device_address=True,
        extensions=("VK_KHR_cooperative_matrix", "VK_NV_cooperative_matrix2"),
        coopmat_shapes=(CoopMatShape(16, 16, 16, "f16", "f16", "f32", "f32"),
                        CoopMatShape(16, 8, 32, "s8", "s8", "s32", "s32", saturating=True,
                                     scope="workgroup")),
        coopmat2=CoopMat2Features(*[True] * 7), coopmat2_max_workgroup_size=256,
        coopmat2_flexible_max_dimension=256, coopmat2_reserved_shared_memory=1024,
    )


# --- Caps as a record --------------------------------------------------------------------------

def test_hand_built_caps_round_trip() -> None:
    caps = hand_built()
    again = Caps.from_json(caps.to_json())
    assert again == caps and again.has_coopmat1 and again.has_coopmat2


def test_from_dict_names_unknown_fields() -> None:
    data = json.loads(hand_built().to_json()) | {"warp_size": 32}
    with pytest.raises(ValueError, match="warp_size"):
        Caps.from_dict(data)


def test_from_dict_names_missing_fields() -> None:
    data = json.loads(hand_built().to_json())
    del data["subgroup_size"], data["max_shared_memory"]
    with pytest.raises(ValueError, match="max_shared_memory.*subgroup_size"):
        Caps.from_dict(data)


# --- text form ---------------------------------------------------------------------------------

def test_format_caps_shows_coopmat_shapes_and_bits() -> None:
    text = format_devices([hand_built()])
    assert "16x16x16 f16*f16+f32->f32 subgroup" in text
    assert "16x8x32 s8*s8+s32->s32 workgroup saturating" in text
    assert "+block_loads" in text and "reserved shared memory 1024 B" in text


def test_format_shape() -> None:
    shape = CoopMatShape(16, 16, 16, "f16", "f16", "f32", "f32")
    assert format_shape(shape) == "16x16x16 f16*f16+f32->f32 subgroup"


# --- Vulkan plumbing that lavapipe cannot reach --------------------------------------------------

def test_coopmat_shape_names_unknown_enums() -> None:
    from kgen.runtime import vk
    from kgen.runtime.devices import coopmat_shape
    p = vk.ffi.new("VkCooperativeMatrixPropertiesKHR*", {
        "MSize": 16, "NSize": 8, "KSize": 16, "AType": 0, "BType": 1000141000, "CType": 1,
        "ResultType": 77, "saturatingAccumulation": 1, "scope": 4})[0]
    shape = coopmat_shape(p)
    assert (shape.a_type, shape.b_type, shape.result_type) == ("f16", "bf16", "unknown(77)")
    assert shape.scope == "unknown(4)" and shape.saturating


def test_hand_made_structs_match_the_c_layout() -> None:
    from kgen.runtime import vk
    f = vk.ext_ffi
    assert f.offsetof("Coopmat2Features", "f") == 16 and f.sizeof("Coopmat2Features") == 48
    assert f.offsetof("Coopmat2Properties", "workgroupScopeReservedSharedMemory") == 24
    assert f.offsetof("Bfloat16Features", "shaderBFloat16CooperativeMatrix") == 24
    assert len(dataclasses.fields(CoopMat2Features)) == len(f.new("Coopmat2Features*").f)


def test_link_chain_crosses_ffi_instances() -> None:
    import vulkan

    from kgen.runtime import vk
    head = vk.new_struct(vk.ffi, "VkPhysicalDeviceFeatures2",
                         vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2)
    mid = vk.new_struct(vk.ext_ffi, "Coopmat2Features", vk.STYPE_COOPMAT2_FEATURES)
    tail = vk.new_struct(vk.ffi, "VkPhysicalDevice8BitStorageFeatures",
                         vulkan.VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES)
    vk.link_chain([(vk.ffi, head), (vk.ext_ffi, mid), (vk.ffi, tail)])
    assert int(vk.ffi.cast("uintptr_t", head.pNext)) == int(vk.ext_ffi.cast("uintptr_t", mid))
    assert int(vk.ext_ffi.cast("uintptr_t", mid.pNext)) == int(vk.ffi.cast("uintptr_t", tail))
    assert tail.pNext == vk.ffi.NULL


def test_structs_are_chained_only_when_the_device_offers_them() -> None:
    from kgen.runtime.devices import _FEATURES, _PROPERTIES
    assert _FEATURES["dot"].wanted((1, 3), ())
    assert not _FEATURES["dot"].wanted((1, 2), ())
    assert _FEATURES["dot"].wanted((1, 2), ("VK_KHR_shader_integer_dot_product",))
    assert not _FEATURES["coopmat2"].wanted((1, 4), ()) and not _PROPERTIES["coopmat2"].wanted((1, 4), ())
    assert _PROPERTIES["coopmat2"].wanted((1, 3), ("VK_NV_cooperative_matrix2",))


def test_vulkan_error_names_the_result() -> None:
    import vulkan

    from kgen.runtime import vk

    def vkCreateDevice():  # noqa: N802 - named like the binding function it stands for
        raise vulkan.VkErrorOutOfPoolMemory

    with pytest.raises(vk.VulkanError, match=r"vkCreateDevice returned VK_ERROR_OUT_OF_POOL_MEMORY") as info:
        vk.call(vkCreateDevice)
    assert info.value.result == -1000069000 and info.value.call == "vkCreateDevice"
    assert vk.check("vkX", vulkan.VK_INCOMPLETE) == vulkan.VK_INCOMPLETE
    with pytest.raises(vk.VulkanError, match=r"VK_ERROR_DEVICE_LOST \(-4\)"):
        vk.check("vkQueueSubmit", -4)
