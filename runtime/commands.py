"""Command buffers, fences and the three memory barriers every submission uses.

Each CommandSlot is one command buffer (or a few, submitted one after another) with its own pool,
fence, lock and prebuilt VkSubmitInfos, reused for every submission: a launch allocates no Vulkan
objects and few cffi ones. A fence is waited on and reset only by the holder of its slot's lock,
so no thread waits on a fence that another is resetting or destroying.

Barriers: every command buffer starts with SETTLE (writes of earlier submissions, by shaders or
copies, become visible to this one: a fence wait on the host orders nothing between submissions)
and the last one a slot submits ends with TO_HOST (a fence alone does not make device writes
visible to mapped memory); recorded sequences put BETWEEN after each dispatch but the last.
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
    """`count` primary command buffers in a command pool of their own, and the fence of their
    submissions. submit() hands each buffer to the queue in a vkQueueSubmit of its own, in order,
    and only the last carries the fence: a fence's signal covers every batch submitted to the
    queue before it, and a GPU watchdog (amdgpu's job timeout, Windows' TDR) times each
    submission apart, so work spread over several buffers never counts as one.

    Vulkan wants the pool, the buffers and the fence externally synchronized: `lock` is that
    synchronization, held around begin .. end .. submit .. wait. A pool per slot keeps two slots
    recording at once from sharing one. The queue is shared by every slot of the device, so
    submit() takes the device's queue lock for the vkQueueSubmit calls alone."""

    def __init__(self, dev: Any, *, one_time: bool, count: int = 1):
        self.lock = threading.Lock()
        self._dev = dev.handle
        self._queue, self._queue_lock = dev.queue, dev.queue_lock
        self.cmd = self.fence = None
        self.cmds: tuple[Any, ...] = ()
        pool_info = ffi.new("VkCommandPoolCreateInfo*", {
            "sType": vulkan.VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO, "queueFamilyIndex": dev.queue_family,
            "flags": vulkan.VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT})
        self._pool = handles.create("CommandPool", "vkCreateCommandPool", lib.vkCreateCommandPool,
                                    self._dev, pool_info, ffi.NULL)
        try:
            info = ffi.new("VkCommandBufferAllocateInfo*", {
                "sType": vulkan.VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, "commandPool": self._pool,
                "level": vulkan.VK_COMMAND_BUFFER_LEVEL_PRIMARY, "commandBufferCount": 1})
            self._cmds = ffi.new("VkCommandBuffer[]", count)
            for i in range(count):   # one at a time: the handles module tracks each
                self._cmds[i] = handles.create("CommandBuffer", "vkAllocateCommandBuffers",
                                               lib.vkAllocateCommandBuffers, self._dev, info)
                self.cmds += (self._cmds[i],)
            self.cmd = self.cmds[0]
            fence_info = ffi.new("VkFenceCreateInfo*", {"sType": vulkan.VK_STRUCTURE_TYPE_FENCE_CREATE_INFO})
            self.fence = handles.create("Fence", "vkCreateFence", lib.vkCreateFence, self._dev, fence_info, ffi.NULL)
        except BaseException:
            self._release()
            raise
        self._fences = ffi.new("VkFence[1]", [self.fence])
        self._submits = [ffi.new("VkSubmitInfo*", {"sType": vulkan.VK_STRUCTURE_TYPE_SUBMIT_INFO,
                                                   "commandBufferCount": 1, "pCommandBuffers": self._cmds + i})
                         for i in range(count)]
        flags = vulkan.VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT if one_time else 0
        self._begin = ffi.new("VkCommandBufferBeginInfo*", {
            "sType": vulkan.VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO, "flags": flags})
        self.pending = False

    def begin(self, index: int = 0) -> Any:
        cmd = self.cmds[index]
        check("vkBeginCommandBuffer", lib.vkBeginCommandBuffer(cmd, self._begin))
        return cmd

    def end(self, index: int = 0) -> None:
        check("vkEndCommandBuffer", lib.vkEndCommandBuffer(self.cmds[index]))

    def submit(self) -> None:
        last = len(self._submits) - 1
        with self._queue_lock:
            for i, info in enumerate(self._submits):
                result = lib.vkQueueSubmit(self._queue, 1, info, self.fence if i == last else ffi.NULL)
                if result < 0 and i:
                    # The earlier buffers run with no fence to wait on: wait here, so that no
                    # buffer is freed or re-recorded while the GPU still reads it.
                    lib.vkQueueWaitIdle(self._queue)
                check("vkQueueSubmit", result)
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
        for i in range(len(self.cmds)):
            handles.release("CommandBuffer", lib.vkFreeCommandBuffers, self._dev, self._pool, 1, self._cmds + i)
        handles.release("CommandPool", lib.vkDestroyCommandPool, self._dev, self._pool, ffi.NULL)
        self.cmd = self.fence = self._pool = None
        self.cmds = ()
        self.pending = False  # nothing left to wait for, even after a lost device
