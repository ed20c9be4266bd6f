"""The validation layer is wired in: a deliberate misuse is reported and collected."""
from kgen.runtime import vk
from kgen.runtime.context import Device


def test_validation_layer_reports_a_misuse(monkeypatch):
    monkeypatch.setenv("KGEN_VALIDATION", "1")
    vk.validation_errors()  # start clean
    with Device() as device:
        # A buffer of size 0 is invalid usage (VUID-VkBufferCreateInfo-size-00912); raw call,
        # so kgen's own argument checks do not stop it first.
        info = vk.ffi.new("VkBufferCreateInfo*", {
            "sType": vk.vulkan.VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, "size": 0,
            "usage": vk.vulkan.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT})
        out = vk.ffi.new("VkBuffer*")
        result = vk.lib.vkCreateBuffer(device.handle, info, vk.ffi.NULL, out)
        if result == 0:
            vk.lib.vkDestroyBuffer(device.handle, out[0], vk.ffi.NULL)
    errors = vk.validation_errors()
    assert any("size" in e for e in errors), errors
