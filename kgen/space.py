"""The variant space: which variants exist for a (device, problem class), and why the rest do not.

`why_invalid(v, caps)` is the one validity function: the enumerator, the runtime, the tuner and
the tests all call it, and its reason becomes the error message.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .caps import Caps
from .errors import InvalidVariant
from .paths import all_specs, path_spec
from .problem import ProblemClass
from .types import KvType
from .variant import PathKind, Variant


def why_invalid(v: Variant, caps: Caps) -> str | None:
    """None if `v` can run on the device described by `caps`, else the reason."""
    spec = path_spec(v.path)
    v = v.kernel  # kv_f16: the conversion pass runs anywhere; the kernel is what must fit
    if (reason := spec.supports(caps)) is not None:
        return f"path {v.path}: {reason}"
    shared = spec.layout(v).shared_bytes
    if shared > caps.max_shared_memory:
        return f"shared memory: needs {shared} bytes, the device allows {caps.max_shared_memory}"
    if v.wg > caps.max_workgroup_invocations:
        return f"wg={v.wg} exceeds maxComputeWorkGroupInvocations={caps.max_workgroup_invocations}"
    if v.wg > caps.max_workgroup_size[0]:
        return f"wg={v.wg} exceeds maxComputeWorkGroupSize.x={caps.max_workgroup_size[0]}"
    if v.subgroup != caps.subgroup_size:
        if not caps.subgroup_size_control:
            return (f"subgroup={v.subgroup}: the device runs {caps.subgroup_size} and has no "
                    "subgroup size control")
        if not caps.min_subgroup_size <= v.subgroup <= caps.max_subgroup_size:
            return (f"subgroup={v.subgroup} outside the device's range "
                    f"{caps.min_subgroup_size}-{caps.max_subgroup_size}")
    if v.acc == 16 and not caps.shader_float16:
        return "acc=16 needs shaderFloat16, which the device lacks"
    return spec.device_reason(v, caps)


@dataclass
class Space:
    """The outcome of enumerating: runnable variants, and every rejected one with its reason."""

    problem: ProblemClass
    valid: list[Variant] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (variant or knobs, reason)
    unsupported_paths: dict[str, str] = field(default_factory=dict)

    def by_path(self) -> dict[PathKind, list[Variant]]:
        out: dict[PathKind, list[Variant]] = {}
        for v in self.valid:
            out.setdefault(v.path, []).append(v)
        return out


def enumerate_space(problem: ProblemClass, caps: Caps,
                    paths: tuple[PathKind, ...] | None = None) -> Space:
    space = Space(problem)
    seen: set[str] = set()
    for spec in all_specs():
        if paths is not None and spec.KIND not in paths:
            continue
        if (reason := spec.supports(caps)) is not None:
            space.unsupported_paths[spec.KIND.value] = reason
            continue
        for knobs in _with_converted_kv(spec, problem, caps):
            try:
                v = Variant(**knobs)
            except InvalidVariant as exc:
                space.rejected.append((exc.what, exc.reason))
                continue
            if v.uri in seen:
                continue
            seen.add(v.uri)
            if (reason := why_invalid(v, caps)) is not None:
                space.rejected.append((v.uri, reason))
            else:
                space.valid.append(v)
    return space


# Query rows past which a quantized K/V cache is converted to f16 once per call, as a tuning
# option: every KV tile is then decoded once instead of once per row tile that reads it.
KV_F16_MIN_NQ_BUCKET = 2  # n_q > 8


def _with_converted_kv(spec, problem: ProblemClass, caps: Caps):
    """The path's candidates, and for prefill over quantized K/V also its f16 candidates run
    behind the conversion pass (kv_f16)."""
    yield from spec.candidates(problem, caps)
    types = {f"{t}_type": getattr(problem, f"{t}_type") for t in "kv"}
    if problem.nq_bucket >= KV_F16_MIN_NQ_BUCKET and any(t.quantized for t in types.values()):
        as_f16 = dataclasses.replace(problem, **{n: KvType.F16 for n, t in types.items() if t.quantized})
        for knobs in spec.candidates(as_f16, caps):
            yield dict(knobs, **types, kv_f16=True)


def default_variant(problem: ProblemClass, caps: Caps, path: PathKind | None = None) -> Variant:
    """The heuristic choice: the first supported path in coopmat2 > coopmat1 > scalar order
    whose default fits the device (or the forced `path`)."""
    order = [path] if path is not None else [PathKind.COOPMAT2, PathKind.COOPMAT1, PathKind.SCALAR]
    reasons = []
    for kind in order:
        spec = path_spec(kind)
        if (reason := spec.supports(caps)) is not None:
            reasons.append(f"{kind}: {reason}")
            continue
        v = spec.default(problem, caps)
        if (reason := why_invalid(v, caps)) is None:
            return v
        reasons.append(f"{kind}: default {v.uri}: {reason}")
    raise InvalidVariant(problem.key, "no path can run it here: " + "; ".join(reasons))
