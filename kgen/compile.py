"""GLSL -> SPIR-V through the discovered compiler, behind a content-addressed on-disk cache.

Key = sha256 of (rendered source, compiler identity and version, flags, target env). An entry is
`<key>.spv` plus a `<key>.json` sidecar that records the key and the binary's sha256 and is
written last: the sidecar is the "complete" marker. Both are written to a temporary file and
renamed, so several processes may compile at once and an interrupted write is never mistaken for
an entry. An entry is used only when its sidecar names its own key, the hash matches and the
binary starts as SPIR-V does; anything else (missing, torn, corrupt, copied from another key,
not a regular file) is a miss, never an exception, and is overwritten by the rebuild. The cache
is optional: when it cannot be written, kgen warns once per folder and compiles in memory.
"""
from __future__ import annotations

import array
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from . import knobs
from .errors import CompileError, KgenError, UnsupportedVariant
from .render import render
from .toolchain import TARGET_ENV, Compiler, describe_exit, find_compiler, run_tool, spirv_tool
from .variant import Variant

T = TypeVar("T")
SPIRV_MAGIC = b"\x03\x02\x23\x07"  # 0x07230203, little-endian
SPIRV_HEADER_BYTES = 20             # magic, version, generator, bound, schema
OP_CAPABILITY, OP_FUNCTION_END = 17, 56

CACHE_FORMAT = 1


@dataclass(frozen=True)
class Compiled:
    uri: str
    key: str
    spirv: bytes
    from_cache: bool


def cache_key(source: str, compiler: Compiler) -> str:
    material = {"format": CACHE_FORMAT, "source": source, "compiler": compiler.identity,
                "flags": compiler.command(Path("in.comp"), Path("out.spv"))[1:], "target": TARGET_ENV}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def looks_like_spirv(blob: bytes) -> bool:
    """The shape of a SPIR-V module, checked in one pass (about 0.2 ms for an FA kernel, where
    spirv-val takes 70): the magic number, a 1.x version, bound > 0, schema 0, then instructions
    whose word counts end exactly at the end, the first an OpCapability, the last an
    OpFunctionEnd. A damaged cache entry
    must never reach a driver: lavapipe crashes on a module of zeros behind a valid magic."""
    if len(blob) < SPIRV_HEADER_BYTES + 4 or len(blob) % 4 or blob[:4] != SPIRV_MAGIC:
        return False
    words = array.array("I", blob)
    if sys.byteorder == "big":
        words.byteswap()
    version, bound, schema = words[1], words[3], words[4]
    if version & 0xFF0000FF or version >> 16 != 1 or bound == 0 or schema != 0 or words[5] & 0xFFFF != OP_CAPABILITY:
        return False
    i = last = 5
    while i < len(words):
        if (count := words[i] >> 16) == 0:
            return False
        i, last = i + count, i
    return i == len(words) and words[last] == (1 << 16) | OP_FUNCTION_END


class SpirvCache:
    def __init__(self, directory: Path | None = None):
        self.dir = Path(directory) if directory is not None else knobs.cache_dir()

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.spv", self.dir / f"{key}.json"

    def get(self, key: str) -> bytes | None:
        blob_path, meta_path = self._paths(key)
        meta_text, blob = read_regular_file(meta_path), read_regular_file(blob_path)
        if meta_text is None or blob is None:
            return None
        try:
            meta = json.loads(meta_text)
        except (ValueError, RecursionError):
            return None
        # The key binds the sidecar to its entry: another kernel's blob and sidecar copied
        # under this key match each other, but not the key.
        if (not isinstance(meta, dict) or meta.get("key") != key
                or meta.get("sha256") != hashlib.sha256(blob).hexdigest() or not looks_like_spirv(blob)):
            return None
        return blob

    def put(self, key: str, blob: bytes, **meta) -> bool:
        """Store an entry; False (after one warning per folder) when the folder cannot be written."""
        blob_path, meta_path = self._paths(key)
        record = {"key": key, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob), **meta}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(blob_path, blob)
            atomic_write(meta_path, json.dumps(record, sort_keys=True, indent=1).encode())
        except OSError as exc:
            _warn_unwritable(self.dir, exc)
            return False
        return True

    def drop(self, key: str) -> None:
        """Forget an entry (sidecar first: without it the entry is a miss)."""
        for path in reversed(self._paths(key)):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # a folder in the entry's place, say: still a miss, and never deleted here


_warned_dirs: set[str] = set()
_warned_lock = threading.Lock()


def _warn_unwritable(directory: Path, exc: OSError) -> None:
    with _warned_lock:
        if str(directory) in _warned_dirs:
            return
        _warned_dirs.add(str(directory))
    warnings.warn(f"kgen: the SPIR-V cache {directory} cannot be written ({exc}); compiling in "
                  "memory. Point KGEN_CACHE_DIR at a writable folder to keep compiled kernels.",
                  RuntimeWarning, stacklevel=3)


def read_regular_file(path: Path) -> bytes | None:
    """The bytes of `path` when it is a regular file, else None (missing, unreadable, a folder,
    a FIFO or a device). Opened non-blocking, so a FIFO in a file's place cannot hang the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError:
        return None
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename: readers
    see the old file or the whole new one, never a torn one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump_glsl(source: str, *, name: str, directory: Path | None = None) -> Path:
    """Write `source` to `<directory>/<name>-<sha256[:12]>.comp` (default knobs.glsl_dir())
    atomically, unless it is there already, and return the path (KGEN_DEBUG=4)."""
    directory = Path(directory) if directory is not None else knobs.glsl_dir()
    stem = re.sub(r"[^\w.-]", "_", name)
    path = directory / f"{stem}-{hashlib.sha256(source.encode()).hexdigest()[:12]}.comp"
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(path, source.encode())
    return path


def compile_source(source: str, *, name: str, cache: SpirvCache | None = None,
                   compiler: Compiler | None = None, validate: bool = True) -> Compiled:
    """Compile one GLSL compute shader; `name` (a variant uri) labels errors and cache metadata."""
    compiler = compiler or find_compiler()
    cache = cache if cache is not None else SpirvCache()
    key = cache_key(source, compiler)
    if (blob := cache.get(key)) is not None:
        return Compiled(name, key, blob, True)
    with tempfile.TemporaryDirectory(prefix="kgen-") as tmp:
        src, out = Path(tmp) / f"{name}.comp", Path(tmp) / f"{name}.spv"
        src.write_text(source)
        result = _run(compiler.command(src, out), name=name)
        log = (result.stdout + result.stderr).replace(str(src), f"{name}.comp")
        if result.returncode != 0 or not out.is_file():
            status = describe_exit(result.returncode) if result.returncode else "wrote no output"
            raise CompileError(name, f"{compiler.path.name} {status}\n{log}", excerpt_for(log, source),
                               returncode=result.returncode)
        if validate:
            check = _run([str(spirv_tool("spirv-val")), "--target-env", TARGET_ENV, str(out)], name=name)
            if check.returncode != 0:
                raise CompileError(name, f"spirv-val rejected the module ({describe_exit(check.returncode)}):\n"
                                   + check.stdout + check.stderr, returncode=check.returncode)
        blob = out.read_bytes()
    cache.put(key, blob, name=name, compiler=compiler.identity, target=TARGET_ENV)
    return Compiled(name, key, blob, False)


def _run(cmd: list[str], *, name: str) -> subprocess.CompletedProcess:
    try:
        return run_tool(cmd)
    except subprocess.TimeoutExpired as exc:
        raise CompileError(name, f"{Path(cmd[0]).name} timed out after {exc.timeout:g} s and was killed; "
                           "KGEN_COMPILE_TIMEOUT (seconds, 0 = no limit) sets the limit") from None


def create_with(source: str, create: Callable[[bytes], T], *, name: str, cache: SpirvCache | None = None,
                compiler: Compiler | None = None, compiled: Compiled | None = None) -> T:
    """create(spirv) (a device's pipeline, say) for this source. A cached binary that create
    refuses with a kgen error (a driver that rejects the module or the pipeline) is dropped and
    compiled once more, so a bad entry that passed the cache's checks fails one call, not all.
    `compiled`: compile_source's result for this source already at hand (an in-process memo)."""
    cache = cache if cache is not None else SpirvCache()
    compiled = compiled or compile_source(source, name=name, cache=cache, compiler=compiler)
    try:
        return create(compiled.spirv)
    except KgenError as exc:
        if not compiled.from_cache or isinstance(exc, UnsupportedVariant):  # that one is about the device
            raise
        cache.drop(compiled.key)
        fresh = compile_source(source, name=name, cache=cache, compiler=compiler)
        if fresh.spirv == compiled.spirv:
            raise  # the same binary: the refusal was not about the cache
    return create(fresh.spirv)


_LINE_RE = re.compile(r"(?:ERROR|WARNING|error|warning)?:?\s*(?:\S*?\.comp|0)?:(\d+):")


def excerpt_for(log: str, source: str, context: int = 3, most: int = 5) -> str:
    """The source lines the compiler complained about, numbered, with `context` lines around."""
    lines = source.splitlines()
    wanted = []
    for m in _LINE_RE.finditer(log):
        n = int(m.group(1))
        if 1 <= n <= len(lines) and n not in wanted:
            wanted.append(n)
    chunks = []
    for n in wanted[:most]:
        lo, hi = max(1, n - context), min(len(lines), n + context)
        chunks.append("\n".join(f"{'>' if i == n else ' '}{i:5d} | {lines[i - 1]}" for i in range(lo, hi + 1)))
    return "\n  ...\n".join(chunks)


def compile_variant(v: Variant, **kwargs) -> Compiled:
    return compile_source(render(v), name=v.uri, **kwargs)


def _compile_uri(args: tuple[str, str | None]) -> tuple[str, Compiled | CompileError]:
    uri, cache_dir = args
    try:
        return uri, compile_variant(Variant.parse(uri), cache=SpirvCache(Path(cache_dir) if cache_dir else None))
    except CompileError as exc:
        return uri, exc


def compile_iter(variants: Iterable[Variant], *, jobs: int | None = None,
                 cache: SpirvCache | None = None) -> Iterator[tuple[str, Compiled | CompileError]]:
    """Compile in parallel, yielding (uri, Compiled or the CompileError it raised) in the order
    given, each as soon as it is ready: a consumer can use early results while later ones
    compile (the tuner times while it compiles). Threads suffice, the compiler is a child
    process; and unlike a forked pool they are safe beside an open Vulkan device."""
    uris = list(dict.fromkeys(v.uri for v in variants))
    cache_dir = str(cache.dir) if cache is not None else None
    jobs = jobs or knobs.get("KGEN_JOBS") or os.cpu_count() or 1
    find_compiler()  # fail once, clearly, before forking workers
    work = [(uri, cache_dir) for uri in uris]
    if jobs == 1 or len(work) <= 1:
        yield from map(_compile_uri, work)
        return
    pool = ThreadPoolExecutor(max_workers=min(jobs, len(work)))
    try:
        yield from pool.map(_compile_uri, work, chunksize=1)
    finally:
        pool.shutdown(cancel_futures=True)


def compile_many(variants: Iterable[Variant], *, jobs: int | None = None,
                 cache: SpirvCache | None = None, progress=None) -> dict[str, Compiled | CompileError]:
    """Compile in parallel (see compile_iter); returns uri -> Compiled, or the CompileError that variant raised.
    `progress(done, total, uri)` is called as results arrive."""
    unique = list({v.uri: v for v in variants}.values())
    results: dict[str, Compiled | CompileError] = {}
    for uri, outcome in compile_iter(unique, jobs=jobs, cache=cache):
        results[uri] = outcome
        if progress:
            progress(len(results), len(unique), uri)
    return results
