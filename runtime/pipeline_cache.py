"""The VkPipelineCache of a device, loaded from and saved to one file per pipelineCacheUUID.

The file is the driver's own blob. Vulkan checks its header too, but a foreign or garbled file is
filtered here first (header size and version, vendor, device and cache UUID must match), so the
driver only ever sees data it wrote itself. A missing, foreign or corrupt file is a cold cache,
never an error; saving is an atomic replace, so concurrent processes never see a torn file.
"""
from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Any

import vulkan

from kgen import knobs
from kgen.caps import Caps
from kgen.compile import atomic_write, read_regular_file

from . import handles
from .vk import check, ffi, lib

# VkPipelineCacheHeaderVersionOne: headerSize, headerVersion, vendorID, deviceID, pipelineCacheUUID.
HEADER = struct.Struct("<IIII16s")


def cache_path(caps: Caps) -> Path:
    return knobs.cache_dir().parent / "pipelines" / f"{caps.pipeline_cache_uuid}.bin"


def header_ok(data: bytes, caps: Caps) -> bool:
    if len(data) < HEADER.size:
        return False
    size, version, vendor, device, uuid = HEADER.unpack_from(data)
    return (HEADER.size <= size <= len(data) and version == vulkan.VK_PIPELINE_CACHE_HEADER_VERSION_ONE
            and (vendor, device) == (caps.vendor_id, caps.device_id)
            and uuid == bytes.fromhex(caps.pipeline_cache_uuid))


def load(path: Path, caps: Caps) -> bytes:
    """The file's bytes when it is a regular file that belongs to this device, else b"" (a
    folder or a FIFO in its place included: never an error, never a hang)."""
    data = read_regular_file(path)
    return data if data is not None and header_ok(data, caps) else b""


class PipelineCache:
    """persistent=False: an empty cache that is never saved."""

    def __init__(self, vk_device: Any, caps: Caps, *, persistent: bool = True):
        self._dev = vk_device
        self.path = cache_path(caps)
        self.persistent = persistent
        self.loaded = load(self.path, caps) if persistent else b""
        initial = ffi.from_buffer(self.loaded) if self.loaded else ffi.NULL
        info = ffi.new("VkPipelineCacheCreateInfo*", {
            "sType": vulkan.VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO,
            "initialDataSize": len(self.loaded), "pInitialData": initial})
        self.handle = handles.create("PipelineCache", "vkCreatePipelineCache", lib.vkCreatePipelineCache,
                                     vk_device, info, ffi.NULL)

    def data(self) -> bytes:
        """vkGetPipelineCacheData (the binding has no wrapper): ask the size, then fill, and ask
        again while the driver answers VK_INCOMPLETE because the cache grew in between."""
        size = ffi.new("size_t*")
        while True:
            check("vkGetPipelineCacheData", lib.vkGetPipelineCacheData(self._dev, self.handle, size, ffi.NULL))
            blob = ffi.new("char[]", size[0])
            result = check("vkGetPipelineCacheData", lib.vkGetPipelineCacheData(self._dev, self.handle, size, blob))
            if result != vulkan.VK_INCOMPLETE:
                return ffi.buffer(blob, size[0])[:]

    def save(self) -> bool:
        """Write the cache when it differs from what was loaded (or the file went away); True
        when a file was written. A failed write only warns: the cache is an optimization."""
        if not self.persistent:
            return False
        data = self.data()
        if not data or (data == self.loaded and self.path.is_file()):
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, data)
        except OSError as exc:
            warnings.warn(f"kgen: could not save the pipeline cache to {self.path}: {exc}", stacklevel=2)
            return False
        self.loaded = data
        return True

    def close(self) -> None:
        if self.handle is not None:
            handles.release("PipelineCache", lib.vkDestroyPipelineCache, self._dev, self.handle, ffi.NULL)
            self.handle = None
