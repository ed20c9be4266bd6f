"""Command buffers, fences and the three memory barriers every submission uses.

Each CommandSlot is one command buffer with its own pool, fence, lock and a prebuilt VkSubmitInfo,
reused for every submission: a launch allocates no Vulkan objects and few cffi ones. A fence is
waited on and reset only by the holder of its slot's lock, so no thread waits on a fence that
another is resetting or destroying.

Barriers: every command buffer starts with SETTLE (writes of earlier submissions, by shaders or
copies, become visible to this one: a fence wait on the host orders nothing between submissions)
and ends with TO_HOST (a fence alone does not make device writes visible to mapped memory);
recorded sequences put BETWEEN after each dispatch but the last.
"""
from __future__ import annotations

import threading
from typing import Any

import vulkan

from . import handles
from .vk import VulkanError, check, ffi, lib

NO_TIMEOUT = 2**64 - 1
_STAGES = vulkan.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | vulkan.VK_PIPELINE_STAGE_TRANSFER_BIT
_WRITES = vulkan.VK_ACCESS_SHADER_WRITE_BIT | vulkan.VK_ACCESS_TRANSFER_WRITE_BIT
_ALL_ACCESS = (_WRITES | vulkan.VK_ACCESS_SHADER_READ_BIT | vulkan.VK_ACCESS_TRANSFER_READ_BIT)


def _barrier(src_stage: int, src: int, dst_stage: int, dst: int) -> tuple[int, int, Any]:
    mb = ffi.new("VkMemoryBarrier*", {"sType": vulkan.VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                                      "srcAccessMask": src, "dstAccessMask": dst})
    return src_stage, dst_stage, mb


SETTLE = _barrier(_STAGES, _WRITES, _STAGES, _ALL_ACCESS)
BETWEEN = _barrier(vulkan.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, vulkan.VK_ACCESS_SHADER_WRITE_BIT,
                   vulkan.VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                   vulkan.VK_ACCESS_SHADER_READ_BIT | vulkan.VK_ACCESS_SHADER_WRITE_BIT)
TO_HOST = _barrier(_STAGES, _WRITES, vulkan.VK_PIPELINE_STAGE_HOST_BIT, vulkan.VK_ACCESS_HOST_READ_BIT)


def barrier(cmd: Any, which: tuple[int, int, Any]) -> None:
    src_stage, dst_stage, mb = which
    lib.vkCmdPipelineBarrier(cmd, src_stage, dst_stage, 0, 1, mb, 0, ffi.NULL, 0, ffi.NULL)


class CommandSlot:
    """One primary command buffer in a command pool of its own, and the fence of its submissions.

    Vulkan wants the pool, the buffer and the fence externally synchronized: `lock` is that
    synchronization, held around begin .. end .. submit .. wait. A pool per slot keeps two slots
    recording at once from sharing one. The queue is shared by every slot of the device, so
    submit() takes the device's queue lock for the vkQueueSubmit alone."""

    def __init__(self, dev: Any, *, one_time: bool):
        self.lock = threading.Lock()
        self._dev = dev.handle
        self._queue, self._queue_lock = dev.queue, dev.queue_lock
        self.cmd = self.fence = None
        pool_info = ffi.new("VkCommandPoolCreateInfo*", {
            "sType": vulkan.VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO, "queueFamilyIndex": dev.queue_family,
            "flags": vulkan.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT})
        self._pool = handles.create("CommandPool", "vkCreateCommandPool", lib.vkCreateCommandPool,
                                    self._dev, pool_info, ffi.NULL)
        try:
            info = ffi.new("VkCommandBufferAllocateInfo*", {
                "sType": vulkan.VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, "commandPool": self._pool,
                "level": vulkan.VK_COMMAND_BUFFER_LEVEL_PRIMARY, "commandBufferCount": 1})
            self.cmd = handles.create("CommandBuffer", "vkAllocateCommandBuffers",
                                      lib.vkAllocateCommandBuffers, self._dev, info)
            self._cmds = ffi.new("VkCommandBuffer[1]", [self.cmd])
            fence_info = ffi.new("VkFenceCreateInfo*", {"sType": vulkan.VK_STRUCTURE_TYPE_FENCE_CREATE_INFO})
            self.fence = handles.create("Fence", "vkCreateFence", lib.vkCreateFence, self._dev, fence_info, ffi.NULL)
        except BaseException:
            self._release()
            raise
        self._fences = ffi.new("VkFence[1]", [self.fence])
        self._submit = ffi.new("VkSubmitInfo*", {"sType": vulkan.VK_STRUCTURE_TYPE_SUBMIT_INFO,
                                                 "commandBufferCount": 1, "pCommandBuffers": self._cmds})
        flags = vulkan.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT if one_time else 0
        self._begin = ffi.new("VkCommandBufferBeginInfo*", {
            "sType": vulkan.VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO, "flags": flags})
        self.pending = False

    def begin(self) -> Any:
        check("vkBeginCommandBuffer", lib.vkBeginCommandBuffer(self.cmd, self._begin))
        return self.cmd

    def end(self) -> None:
        check("vkEndCommandBuffer", lib.vkEndCommandBuffer(self.cmd))

    def submit(self) -> None:
        with self._queue_lock:
            check("vkQueueSubmit", lib.vkQueueSubmit(self._queue, 1, self._submit, self.fence))
        self.pending = True

    def wait(self) -> None:
        if self.pending:
            check("vkWaitForFences", lib.vkWaitForFences(self._dev, 1, self._fences, 1, NO_TIMEOUT))
            check("vkResetFences", lib.vkResetFences(self._dev, 1, self._fences))
            self.pending = False

    def close(self) -> None:
        """Wait for the last submission, then free the handles (the caller holds `lock`)."""
        if self._pool is None:
            return
        try:
            self.wait()
        except VulkanError:
            pass  # a lost device: its objects are still destroyed below
        self._release()

    def _release(self) -> None:
        if self.fence is not None:
            handles.release("Fence", lib.vkDestroyFence, self._dev, self.fence, ffi.NULL)
        if self.cmd is not None:
            handles.release("CommandBuffer", lib.vkFreeCommandBuffers, self._dev, self._pool, 1, self._cmds)
        handles.release("CommandPool", lib.vkDestroyCommandPool, self._dev, self._pool, ffi.NULL)
        self.cmd = self.fence = self._pool = None
        self.pending = False  # nothing left to wait for, even after a lost device
