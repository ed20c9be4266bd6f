"""The one descriptor set layout of kgen.abi, the pipeline layout every kernel shares, and
descriptor sets allocated from a growing list of pools.

Every kernel has the same interface (abi.BINDINGS storage buffers, one abi.PUSH_BYTES push block),
so one layout pair serves all of them and a descriptor set written for one buffer tuple can be
bound with any kernel.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import vulkan

from kgen import abi

from . import handles
from .vk import RESULT_VALUES, VulkanError, check, ffi, lib

N_BINDINGS = len(abi.BINDINGS)
STORAGE = vulkan.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER
COMPUTE = vulkan.VK_SHADER_STAGE_COMPUTE_BIT
_POOL_FULL = {RESULT_VALUES["VK_ERROR_OUT_OF_POOL_MEMORY"], RESULT_VALUES["VK_ERROR_FRAGMENTED_POOL"]}


class Layouts:
    """The descriptor set layout and pipeline layout of the abi, for one VkDevice."""

    def __init__(self, vk_device: Any):
        self._dev = dev = vk_device
        self.set_layout = self.pipeline_layout = None
        bindings = ffi.new("VkDescriptorSetLayoutBinding[]", [
            {"binding": b.index, "descriptorType": STORAGE, "descriptorCount": 1, "stageFlags": COMPUTE}
            for b in abi.BINDINGS])
        info = ffi.new("VkDescriptorSetLayoutCreateInfo*", {
            "sType": vulkan.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
            "bindingCount": N_BINDINGS, "pBindings": bindings})
        self.set_layout = handles.create("DescriptorSetLayout", "vkCreateDescriptorSetLayout",
                                         lib.vkCreateDescriptorSetLayout, dev, info, ffi.NULL)
        self._set_layouts = ffi.new("VkDescriptorSetLayout[1]", [self.set_layout])
        push = ffi.new("VkPushConstantRange*", {"stageFlags": COMPUTE, "offset": 0, "size": abi.PUSH_BYTES})
        info = ffi.new("VkPipelineLayoutCreateInfo*", {
            "sType": vulkan.VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, "setLayoutCount": 1,
            "pSetLayouts": self._set_layouts, "pushConstantRangeCount": 1, "pPushConstantRanges": push})
        try:
            self.pipeline_layout = handles.create("PipelineLayout", "vkCreatePipelineLayout",
                                                  lib.vkCreatePipelineLayout, dev, info, ffi.NULL)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.pipeline_layout is not None:
            handles.release("PipelineLayout", lib.vkDestroyPipelineLayout, self._dev, self.pipeline_layout, ffi.NULL)
        if self.set_layout is not None:
            handles.release("DescriptorSetLayout", lib.vkDestroyDescriptorSetLayout, self._dev,
                            self.set_layout, ffi.NULL)
        self.set_layout = self.pipeline_layout = None


class DescriptorSet:
    """One allocated set: `ptr` is ready for vkCmdBindDescriptorSets."""

    __slots__ = ("handle", "pool", "ptr")

    def __init__(self, handle: Any, pool: Any):
        self.handle, self.pool = handle, pool
        self.ptr = ffi.new("VkDescriptorSet[1]", [handle])


class DescriptorSets:
    """Allocates sets of the shared layout, adding a pool whenever the last one is full. Pools
    are externally synchronized objects, so allocating and freeing take `_lock`."""

    SETS_PER_POOL = 256

    def __init__(self, vk_device: Any, layouts: Layouts):
        self._dev = vk_device
        self._layouts = layouts
        self._pools: list[Any] = []
        self._lock = threading.Lock()

    def _add_pool(self) -> Any:
        size = ffi.new("VkDescriptorPoolSize*", {"type": STORAGE, "descriptorCount": self.SETS_PER_POOL * N_BINDINGS})
        info = ffi.new("VkDescriptorPoolCreateInfo*", {
            "sType": vulkan.VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
            "flags": vulkan.VK_DESCRIPTOR_POOL_CREATE_FREE_DESCRIPTOR_SET_BIT,
            "maxSets": self.SETS_PER_POOL, "poolSizeCount": 1, "pPoolSizes": size})
        pool = handles.create("DescriptorPool", "vkCreateDescriptorPool", lib.vkCreateDescriptorPool,
                              self._dev, info, ffi.NULL)
        self._pools.append(pool)
        return pool

    def _allocate(self) -> DescriptorSet:
        for attempt in range(2):
            pool = self._pools[-1] if self._pools and not attempt else self._add_pool()
            info = ffi.new("VkDescriptorSetAllocateInfo*", {
                "sType": vulkan.VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO, "descriptorPool": pool,
                "descriptorSetCount": 1, "pSetLayouts": self._layouts._set_layouts})
            out = ffi.new("VkDescriptorSet*")
            result = lib.vkAllocateDescriptorSets(self._dev, info, out)
            if result in _POOL_FULL and not attempt:
                continue
            check("vkAllocateDescriptorSets", result)
            return DescriptorSet(out[0], pool)
        raise VulkanError("vkAllocateDescriptorSets", result)

    def allocate(self, buffers: tuple[Any, ...]) -> DescriptorSet:
        """A set with buffers[i] at binding i (whole buffer)."""
        with self._lock:
            dset = self._allocate()
        infos = ffi.new("VkDescriptorBufferInfo[]", [
            {"buffer": b.handle, "offset": 0, "range": b.nbytes} for b in buffers])
        writes = ffi.new("VkWriteDescriptorSet[]", [
            {"sType": vulkan.VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, "dstSet": dset.handle, "dstBinding": i,
             "descriptorCount": 1, "descriptorType": STORAGE, "pBufferInfo": infos + i}
            for i in range(len(buffers))])
        lib.vkUpdateDescriptorSets(self._dev, len(buffers), writes, 0, ffi.NULL)
        return dset

    def free(self, dset: DescriptorSet) -> None:
        with self._lock:
            check("vkFreeDescriptorSets", lib.vkFreeDescriptorSets(self._dev, dset.pool, 1, dset.ptr))

    def close(self) -> None:
        """Destroy every pool, which frees every set allocated from it."""
        for pool in self._pools:
            handles.release("DescriptorPool", lib.vkDestroyDescriptorPool, self._dev, pool, ffi.NULL)
        self._pools.clear()


class SetCache:
    """Sets for one-shot launches, keyed by the buffers' serials, least recently used evicted.

    Serials are never reused, so a set of a closed buffer can never be hit again; it ages out.
    Used only under the launcher's lock, and one-shot launches wait for completion before
    releasing it: so no set is in flight when one is evicted."""

    def __init__(self, sets: DescriptorSets, capacity: int = 128):
        self._sets, self._capacity = sets, capacity
        self._cache: OrderedDict[tuple[int, ...], DescriptorSet] = OrderedDict()

    def get(self, buffers: tuple[Any, ...]) -> DescriptorSet:
        key = tuple(b.serial for b in buffers)
        dset = self._cache.get(key)
        if dset is not None:
            self._cache.move_to_end(key)
            return dset
        if len(self._cache) >= self._capacity:
            self._sets.free(self._cache.popitem(last=False)[1])
        dset = self._cache[key] = self._sets.allocate(buffers)
        return dset

    def clear(self) -> None:
        self._cache.clear()  # the sets go with their pools
