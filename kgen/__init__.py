"""kgen: flash-attention kernels for Vulkan, generated from templates, verified and tuned per device.

`kgen` itself never imports Vulkan; `kgen.runtime` (the top-level `runtime/` folder) does, and is
loaded on first use.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .api import attention, plan  # noqa: E402  (no Vulkan import until a plan is made)
from .kvtensor import KVTensor  # noqa: E402
from .types import KvType  # noqa: E402

__all__ = ["attention", "plan", "KVTensor", "KvType", "runtime"]


def __getattr__(name: str):
    if name == "runtime":
        return importlib.import_module("kgen.runtime")
    raise AttributeError(f"module 'kgen' has no attribute {name!r}")
