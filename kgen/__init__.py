"""kgen: flash-attention kernels for Vulkan, generated from templates, verified and tuned per device.

`kgen` itself never imports Vulkan; `kgen.runtime` (the top-level `runtime/` folder) does, and is
loaded on first use.
"""
from __future__ import annotations

import importlib

from .version import __version__  # noqa: F401
from . import paths  # noqa: E402,F401  (registers each path's variant rules)
from .api import attention, paged_attention, paged_plan, plan  # noqa: E402  (no Vulkan import until a plan is made)
from .kvtensor import KVTensor  # noqa: E402
from .paged import PagedKV  # noqa: E402
from .types import KvType  # noqa: E402

__all__ = ["attention", "plan", "paged_attention", "paged_plan", "PagedKV", "KVTensor", "KvType", "reference", "quant", "runtime"]

# Loaded on first use: `runtime` imports Vulkan; `reference` (float64 attention) and `quant` (the
# ggml quantizers) need only numpy, and README promises them after `import kgen`.
_LAZY = ("reference", "quant", "runtime")


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"kgen.{name}")
    raise AttributeError(f"module 'kgen' has no attribute {name!r}")
