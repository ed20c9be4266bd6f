"""Who measured a tuning result: the exact device and the exact build of kgen's kernels.

A decision is only reused by the same device identity (vendor, device, driver and its version,
pipeline-cache UUID) and the same build (kgen version, template hash, compiler identity): a
driver update or a template edit means the old timings say nothing about the new code.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DeviceIdentity:
    vendor_id: int
    device_id: int
    driver_id: int
    driver_version: int
    pipeline_cache_uuid: str
    name: str = ""  # shown to people; not part of the key

    @classmethod
    def of(cls, caps) -> "DeviceIdentity":
        return cls(vendor_id=caps.vendor_id, device_id=caps.device_id, driver_id=caps.driver_id,
                   driver_version=caps.driver_version, pipeline_cache_uuid=caps.pipeline_cache_uuid,
                   name=caps.name)

    @property
    def key(self) -> str:
        fields = asdict(self)
        del fields["name"]
        return _digest(fields)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BuildIdentity:
    kgen_version: str
    compiler: str

    @classmethod
    @functools.cache
    def current(cls) -> "BuildIdentity":
        from .version import __version__
        from .toolchain import find_compiler
        return cls(kgen_version=__version__, compiler=find_compiler().identity)

    @property
    def key(self) -> str:
        return _digest(asdict(self))

    def as_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=4096)
def kernel_digest(uri: str) -> str:
    """The source of everything a variant runs, digested: its GLSL, its passes before the kernel
    and, with split_k and no fused reduce, the reduce pass. A measurement or winner holds the
    digest it was timed with; it stands while the variant renders to the same one. "" for a
    uri that no longer parses (a knob that is gone) or renders: it matches nothing."""
    import jinja2

    from .errors import KgenError
    from .passes import passes_before
    from .render import render, render_split_k_reduce
    from .variant import Variant
    try:
        v = Variant.parse(uri)
        sources = [render(v), *(p.render() for p in passes_before(v))]
        if v.split_k and not v.fused_reduce:
            sources.append(render_split_k_reduce(v.head_v, v.sinks))
    except (KgenError, ValueError, ArithmeticError, jinja2.TemplateError):
        return ""   # gone or unrenderable today: nothing stored for it stands
    return _digest({"sources": sources})


def is_current(uri: str, kernel: str) -> bool:
    """Whether a stored timing of variant `uri` with kernel digest `kernel` is of today's kernel."""
    return bool(kernel) and kernel == kernel_digest(uri)
