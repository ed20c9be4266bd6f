"""GLSL -> SPIR-V through the discovered compiler, behind a content-addressed on-disk cache.

Key = sha256 of (rendered source, compiler identity and version, flags, target env). An entry is
`<key>.spv` plus a `<key>.json` sidecar that records the binary's sha256 and is written last: the
sidecar is the "complete" marker. Both are written to a temporary file and renamed, so several
processes may compile at once and an interrupted write is never mistaken for an entry. A missing
or corrupt entry is a miss, never an exception.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from . import knobs
from .errors import CompileError
from .render import render
from .toolchain import TARGET_ENV, Compiler, find_compiler, spirv_tool
from .variant import Variant

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


class SpirvCache:
    def __init__(self, directory: Path | None = None):
        self.dir = Path(directory) if directory is not None else knobs.cache_dir()

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.spv", self.dir / f"{key}.json"

    def get(self, key: str) -> bytes | None:
        blob_path, meta_path = self._paths(key)
        try:
            meta = json.loads(meta_path.read_text())
            blob = blob_path.read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("sha256") != hashlib.sha256(blob).hexdigest():
            return None  # corrupt or torn: treated as a miss and overwritten by the rebuild
        return blob

    def put(self, key: str, blob: bytes, **meta) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        blob_path, meta_path = self._paths(key)
        _atomic_write(blob_path, blob)
        record = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob), **meta}
        _atomic_write(meta_path, json.dumps(record, sort_keys=True, indent=1).encode())


def _atomic_write(path: Path, data: bytes) -> None:
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
        _atomic_write(path, source.encode())
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
        result = subprocess.run(compiler.command(src, out), capture_output=True, text=True)
        log = (result.stdout + result.stderr).replace(str(src), f"{name}.comp")
        if result.returncode != 0 or not out.is_file():
            raise CompileError(name, log, excerpt_for(log, source))
        if validate:
            check = subprocess.run([str(spirv_tool("spirv-val")), "--target-env", TARGET_ENV, str(out)],
                                   capture_output=True, text=True)
            if check.returncode != 0:
                raise CompileError(name, "spirv-val rejected the module:\n" + check.stdout + check.stderr)
        blob = out.read_bytes()
    cache.put(key, blob, name=name, compiler=compiler.identity, target=TARGET_ENV)
    return Compiled(name, key, blob, False)


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
