"""kgen.runtime: the only code that talks to Vulkan.

    with Device() as dev:                       # or Device(index)
        kernel = dev.pipeline(spirv, name="...")
        x = dev.buffer(nbytes); x.write(array)
        us = kernel({0: x, 5: out}, abi.pack(...), groups)   # GPU microseconds
        seq = dev.sequence([(kernel, {0: x, 5: out}, push, groups), ...])
        per_dispatch_us = seq.run()

`open_device()` gives kgen.plan a shared Device per index, closed at interpreter exit.

Threads may share a Device and everything made on it (context.py says how calls take turns);
closing an object while another thread uses it either waits for that use or makes it raise
ClosedError.
"""
from __future__ import annotations

import atexit
import importlib
import threading
from typing import Any

_EXPORTS = {
    "Device": "context", "Buffer": "memory", "BufferPool": "memory", "Kernel": "pipeline",
    "Sequence": "launch", "InvalidArgument": "errors", "ClosedError": "errors",
    "StatisticsUnavailable": "errors",
    "VulkanError": "vk", "live_objects": "handles",
}
_shared: dict[int | None, Any] = {}
_shared_lock = threading.Lock()   # two threads' first plans must not open two devices


def __getattr__(name: str) -> Any:
    # Lazy, so that `import kgen.runtime.devices` alone does not build the whole runtime.
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_device(device: Any = None) -> Any:
    """`device` itself when it is a Device; else the process's shared Device for that index
    (None: kgen.select's choice), opened on first use and closed at exit."""
    from .context import Device
    if isinstance(device, Device):
        return device
    with _shared_lock:
        shared = _shared.get(device)
        if shared is None or shared.closed:
            shared = _shared[device] = Device(device)
        return shared


@atexit.register
def close_shared() -> None:
    """Close the devices open_device() opened (saving their pipeline caches)."""
    with _shared_lock:
        devices = list(_shared.values())
        _shared.clear()
    for dev in devices:
        dev.close()
