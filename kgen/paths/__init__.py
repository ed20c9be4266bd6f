"""One module per code path; each exports the same names (see templates/README.md):

KIND, TEMPLATE, check(v), layout(v), supports(caps), device_reason(v, caps),
candidates(problem, caps), default(problem, caps).
"""
from __future__ import annotations

from types import ModuleType

from ..variant import PathKind


def path_spec(kind: "PathKind | str") -> ModuleType:
    from . import coopmat1, coopmat2, scalar  # late: each imports kgen.variant
    return {PathKind.SCALAR: scalar, PathKind.COOPMAT1: coopmat1,
            PathKind.COOPMAT2: coopmat2}[PathKind.parse(kind)]


def all_specs() -> tuple[ModuleType, ...]:
    return tuple(path_spec(k) for k in PathKind)
