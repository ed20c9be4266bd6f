"""Every KGEN_* environment variable, with its type, default and meaning. No other module reads
os.environ for kgen settings."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Knob:
    name: str
    parse: Callable[[str], object]
    default: object
    doc: str

    def get(self):
        raw = os.environ.get(self.name)
        if raw is None or raw == "":
            return self.default
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise ValueError(f"{self.name}={raw!r}: {exc}") from None


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _int(raw: str) -> int:
    return int(raw, 0)


def _cache_home() -> Path:
    return _path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "kgen"


KNOBS: dict[str, Knob] = {k.name: k for k in (
    Knob("KGEN_GLSLANG", _path, None, "glslang / glslangValidator binary to use (skips discovery)"),
    Knob("KGEN_GLSLC", _path, None, "shaderc glslc binary to use (skips discovery)"),
    Knob("KGEN_CACHE_DIR", _path, None, "SPIR-V cache folder (default: ~/.cache/kgen/spirv)"),
    Knob("KGEN_JOBS", _int, 0, "parallel compile processes (0 = one per CPU core)"),
    Knob("KGEN_DEVICE", str, None, "device index or name substring (default: discrete > integrated > CPU)"),
    Knob("KGEN_PATH", str, None, "force a code path: scalar | coopmat1 | coopmat2"),
    Knob("KGEN_DB", _path, None, "tuning database file (default: ~/.cache/kgen/tuning.sqlite)"),
    Knob("KGEN_AUTOTUNE", lambda s: s not in ("0", "false", "no"), False, "tune a class at call time when no exact decision is stored (as autotune=True)"),
    Knob("KGEN_VALIDATION", lambda s: s not in ("0", "false", "no"), False,
         "Khronos validation layer on; its errors fail the tests (make test sets it)"),
    Knob("KGEN_DEBUG", _int, 0, "debug output on stdout, levels as thresholds (each includes those below): 1 = each plan's variant and how it was chosen (tuned exact / nearest class, heuristic default); 2 = each dispatch of a plan run: step, grid, GPU us, GB/s and TFLOPS of the FA step; 4 = the path of each shader's rendered GLSL (written under the cache's glsl/)"),
)}


def get(name: str):
    return KNOBS[name].get()


def cache_dir() -> Path:
    return get("KGEN_CACHE_DIR") or _cache_home() / "spirv"


def glsl_dir() -> Path:
    """Where KGEN_DEBUG=4 writes the rendered GLSL of the shaders plans compile (beside the SPIR-V cache)."""
    return cache_dir().parent / "glsl"


def debug(level: int) -> bool:
    """KGEN_DEBUG's output of `level` (1, 2, 4) is on: the knob is at least that level."""
    return get("KGEN_DEBUG") >= level


def db_path() -> Path:
    return get("KGEN_DB") or _cache_home() / "tuning.sqlite"
