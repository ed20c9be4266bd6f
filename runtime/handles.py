"""Creation and destruction of Vulkan handles, counted by kind.

Every handle the runtime makes goes through `create` and `release`, so `live_objects()` is an
exact census: tests assert it is empty after Device.close(), which is how a leak shows up
without a validation layer. The census is locked: threads create and release handles at once.
"""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from .vk import check, ffi

_LIVE: Counter[str] = Counter()
_LOCK = threading.Lock()


def create(kind: str, call: str, fn: Callable[..., int], *args: Any) -> Any:
    """Call `fn(*args, out)` where `out` is a fresh `Vk<kind>*`; return the handle."""
    out = ffi.new(f"Vk{kind}*")
    check(call, fn(*args, out))
    with _LOCK:
        _LIVE[kind] += 1
    return out[0]


def adopt(kind: str, handle: Any) -> Any:
    """Count a handle made elsewhere (the instance, by vk.create_instance)."""
    with _LOCK:
        _LIVE[kind] += 1
    return handle


def release(kind: str, fn: Callable[..., Any], *args: Any) -> None:
    """Destroy or free one handle with `fn(*args)` and uncount it."""
    fn(*args)
    with _LOCK:
        _LIVE[kind] -= 1


def live_objects() -> dict[str, int]:
    """Vulkan handles created by the runtime and not yet destroyed, by kind."""
    with _LOCK:
        return {kind: n for kind, n in _LIVE.items() if n}
