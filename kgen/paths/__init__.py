"""One module per code path; each exports the same names (see templates/README.md):

KIND, TEMPLATES (schedule -> top template, for the schedules the path has), check(v), layout(v),
supports(caps), device_reason(v, caps), candidates(problem, caps), default(problem, caps).
"""
from __future__ import annotations

from types import ModuleType

from ..variant import PathKind, register_path_check
from . import coopmat1, coopmat2, scalar

SPECS: dict[PathKind, ModuleType] = {PathKind.SCALAR: scalar, PathKind.COOPMAT1: coopmat1,
                                     PathKind.COOPMAT2: coopmat2}
for _kind, _spec in SPECS.items():
    register_path_check(_kind, _spec.check)


def path_spec(kind: "PathKind | str") -> ModuleType:
    return SPECS[PathKind.parse(kind)]


def all_specs() -> tuple[ModuleType, ...]:
    return tuple(SPECS[k] for k in PathKind)
