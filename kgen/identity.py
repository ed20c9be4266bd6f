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
    template_hash: str
    compiler: str

    @classmethod
    @functools.cache
    def current(cls) -> "BuildIdentity":
        from . import __version__
        from .render import template_hash
        from .toolchain import find_compiler
        return cls(kgen_version=__version__, template_hash=template_hash(),
                   compiler=find_compiler().identity)

    @property
    def key(self) -> str:
        return _digest(asdict(self))

    def as_dict(self) -> dict:
        return asdict(self)
