"""What the path modules share: the description of a template's `shared` arrays, the rule that
keeps a variant to its path's schedules, and the one that keeps coopmat1's knobs out of the
other paths."""
from __future__ import annotations

from dataclasses import dataclass

# Bytes per element of the GLSL types templates put in shared memory (std430-free: shared
# arrays of these types are tightly packed).
GLSL_TYPE_BYTES = {"float16_t": 2, "float": 4, "uint": 4, "vec2": 8, "f16vec4": 8, "vec4": 16, "uvec4": 16}


@dataclass(frozen=True)
class SharedArray:
    """One `shared` array the template declares: `shared <type> <name>[<length>];`."""

    name: str
    type: str
    length: int
    doc: str

    @property
    def bytes(self) -> int:
        return GLSL_TYPE_BYTES[self.type] * self.length


# fused_reduce (templates/common/split_reduce.glsl): the (max, sum) of every (row, split) of the
# tile, read once by the last workgroup. A tile's rows x splits must fit (checked by the plan).
FUSED_STATS_SLOTS = 256


def fused_reduce_shared(v) -> tuple[SharedArray, ...]:
    """The shared arrays split_reduce.glsl declares for a fused_reduce variant (else none)."""
    if not v.fused_reduce:
        return ()
    return (SharedArray("fused_ml", "vec2", FUSED_STATS_SLOTS, "(max, sum) per (tile row, split)"),
            SharedArray("fused_is_last", "uint", 1, "1 in the workgroup that arrived last"))


def schedule_reason(v, templates: dict) -> str | None:
    """Why variant `v`'s schedule is not one its path has (the keys of the path's TEMPLATES),
    or None."""
    if v.schedule not in templates:
        return (f"schedule={v.schedule}: the {v.path} path has "
                f"{', '.join(str(s) for s in templates)}")
    return None


def coopmat1_knob_reason(v) -> str | None:
    """Why variant `v` of another path sets a knob only coopmat1 kernels have, or None
    (frag_scheme and split_sync go with schedules, which `schedule_reason` keeps to the path's)."""
    if v.v_in_k:
        return "v_in_k: a knob of coopmat1's stream and osplit schedules (leave it False)"
    return None
