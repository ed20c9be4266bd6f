"""What the path modules share: the description of a template's `shared` arrays."""
from __future__ import annotations

from dataclasses import dataclass

# Bytes per element of the GLSL types templates put in shared memory (std430-free: shared
# arrays of these types are tightly packed).
GLSL_TYPE_BYTES = {"float16_t": 2, "float": 4, "vec2": 8, "f16vec4": 8, "vec4": 16, "uvec4": 16}


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
