"""Every KGEN_* environment variable, with its type, default and meaning. No other module reads
os.environ for kgen settings."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import KnobError


@dataclass(frozen=True)
class Knob:
    name: str
    parse: Callable[[str], object]
    default: object
    doc: str

    def get(self):
        raw = os.environ.get(self.name)
        if raw is None or raw.strip() == "":
            return self.default
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise KnobError(self.name, raw, str(exc)) from None


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _count(raw: str) -> int:
    """A whole number >= 0 (decimal, or 0x.. / 0o.. / 0b..)."""
    try:
        value = int(raw.strip(), 0)
    except ValueError:
        raise ValueError("a whole number >= 0") from None
    if value < 0:
        raise ValueError("a whole number >= 0")
    return value


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"a boolean: {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)} "
                     "(any case; empty for the default)")


def _seconds(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError("seconds, a number >= 0 (0 = no limit)")
    return value


def _flops(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError("FLOPs, a number >= 0 such as 5e11 (0 = no bound)")
    return value


# KGEN_MAX_SUBMIT_WORK when unset: about 0.25 s of a slow path on the vendor's smaller GPUs, so
# that amdgpu's job timeout and Windows' 2 s TDR stay far away. NVIDIA's compute GPUs run
# without a watchdog, and a CPU driver (lavapipe) has none: no bound there, so their recordings
# (and tuned timings) stay one submission.
SUBMIT_WORK_DEFAULTS = {"AMD": 5e11, "NVIDIA": 0.0}
SUBMIT_WORK_OTHER_GPUS = 1e11   # Intel's iGPUs, ARM, Qualcomm, ImgTec and unknown vendors


def _cache_home() -> Path:
    return _path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "kgen"


KNOBS: dict[str, Knob] = {k.name: k for k in (
    Knob("KGEN_GLSLANG", _path, None, "glslang / glslangValidator binary to use (skips discovery)"),
    Knob("KGEN_GLSLC", _path, None, "shaderc glslc binary to use (skips discovery)"),
    Knob("KGEN_CACHE_DIR", _path, None, "SPIR-V cache folder (default: ~/.cache/kgen/spirv)"),
    Knob("KGEN_JOBS", _count, 0, "parallel compile processes (0 = one per CPU core)"),
    Knob("KGEN_DEVICE", str, None, "device index or name substring (default: discrete > integrated > CPU)"),
    Knob("KGEN_PATH", str, None, "force a code path: scalar | coopmat1 | coopmat2"),
    Knob("KGEN_DB", _path, None, "tuning database file (default: ~/.cache/kgen/tuning.sqlite)"),
    Knob("KGEN_AUTOTUNE", _flag, False, "tune a class at call time when no exact decision is stored (as autotune=True)"),
    Knob("KGEN_VALIDATION", _flag, False,
         "Khronos validation layer on; its errors fail the tests (make test sets it)"),
    Knob("KGEN_COMPILE_TIMEOUT", _seconds, 120.0, "seconds a compiler or SPIR-V tool may run before its "
         "process group is killed and the compile fails (0 = no limit)"),
    Knob("KGEN_MAX_SUBMIT_WORK", _flops, None, "most FLOPs of attention (2*rows*keys*(Dk+Dv), as "
         "KGEN_DEBUG=2 counts them) one queue submission may run, so no dispatch outruns a GPU watchdog: "
         "longer calls are spread over several submissions and, where a workgroup alone would exceed "
         "1/256 of it, more KV splits (0 = no bound; unset: 5e11 on AMD, none on NVIDIA and CPU "
         "drivers, 1e11 on other GPUs)"),
    Knob("KGEN_DEBUG", _count, 0, "debug output on stdout, levels as thresholds (each includes those below): 1 = each plan's variant and how it was chosen (tuned exact / nearest class, heuristic default); 2 = each dispatch of a plan run: step, grid, GPU us, GB/s and TFLOPS of the FA step; 4 = the path of each shader's rendered GLSL (written under the cache's glsl/)"),
)}


def get(name: str):
    return KNOBS[name].get()


def validate() -> None:
    """Parse every knob now, so that a bad value fails once and up front (a KnobError naming the
    variable) rather than later, inside a worker thread."""
    for knob in KNOBS.values():
        knob.get()


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


def max_submit_work(vendor: str, device_type: str) -> float:
    """KGEN_MAX_SUBMIT_WORK for a device of `vendor` (Caps.vendor) and `device_type`: the knob
    if set, else the vendor's default; 0.0 = no bound."""
    work = get("KGEN_MAX_SUBMIT_WORK")
    if work is not None:
        return work
    if device_type == "cpu":
        return 0.0
    return SUBMIT_WORK_DEFAULTS.get(vendor, SUBMIT_WORK_OTHER_GPUS)
