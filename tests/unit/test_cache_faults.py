"""The SPIR-V and pipeline caches under hostile file systems, and compilers that hang or crash:
the cache is optional, an entry is trusted only when it is its key's own, no read can hang,
and a compiler gets KGEN_COMPILE_TIMEOUT seconds, after which its whole process group dies."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from helpers import ROOT
from kgen import compile as kc
from kgen import toolchain
from kgen.caps import Caps
from kgen.errors import CompileError, KgenError, ToolchainError
from kgen.toolchain import Compiler, find_compiler

SOURCE = """#version 450
layout(local_size_x = 64) in;
layout(std430, binding = 0) buffer Buf { float data[]; };
void main() { data[gl_GlobalInvocationID.x] *= 2.0; }
"""
OTHER = SOURCE.replace("2.0", "3.0")


@pytest.fixture
def cache(tmp_path):
    return kc.SpirvCache(tmp_path / "cache")


def compiles(monkeypatch) -> list:
    """The compiler runs from here on (spirv-val runs are not counted)."""
    calls, real = [], toolchain.run_tool
    path = str(find_compiler().path)

    def spy(cmd):
        if cmd[0] == path:
            calls.append(cmd)
        return real(cmd)
    monkeypatch.setattr(kc, "run_tool", spy)
    return calls


def forge(cache: kc.SpirvCache, key: str, blob: bytes) -> None:
    """An entry whose sidecar agrees with its blob and names its key: only the content is bad."""
    (cache.dir / f"{key}.spv").write_bytes(blob)
    meta = {"key": key, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    (cache.dir / f"{key}.json").write_text(json.dumps(meta))


# --- family 5: a cache that cannot be written ----------------------------------------------------
def test_cache_dir_that_is_a_file_compiles_in_memory_and_warns_once(tmp_path, monkeypatch):
    in_the_way = tmp_path / "not-a-folder"
    in_the_way.write_text("x")
    monkeypatch.setenv("KGEN_CACHE_DIR", str(in_the_way))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = kc.compile_source(SOURCE, name="double")
        again = kc.compile_source(SOURCE, name="double")
    assert first.spirv[:4] == kc.SPIRV_MAGIC and again.spirv == first.spirv
    assert not again.from_cache
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and str(in_the_way) in messages[0] and "KGEN_CACHE_DIR" in messages[0]


def test_home_that_cannot_hold_a_cache_compiles_in_memory(tmp_path, monkeypatch):
    home = tmp_path / "home-is-a-file"
    home.write_text("x")
    monkeypatch.delenv("KGEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    with pytest.warns(RuntimeWarning, match="cannot be written"):
        assert kc.compile_source(SOURCE, name="double").spirv[:4] == kc.SPIRV_MAGIC


def test_read_only_cache_dir_compiles_in_memory(cache, monkeypatch):
    def refuse(path, data):  # what a read-only folder answers (root ignores chmod, so simulate it)
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(kc, "atomic_write", refuse)
    with pytest.warns(RuntimeWarning, match="Permission denied"):
        result = kc.compile_source(SOURCE, name="double", cache=cache)
    assert result.spirv[:4] == kc.SPIRV_MAGIC and not result.from_cache


# --- family 6: entries that are not their key's own ----------------------------------------------
def test_entry_copied_from_another_key_is_rebuilt(cache, monkeypatch):
    a = kc.compile_source(SOURCE, name="double", cache=cache)
    b = kc.compile_source(OTHER, name="triple", cache=cache)
    for ext in ("spv", "json"):  # b's blob and its matching sidecar, under a's key
        (cache.dir / f"{a.key}.{ext}").write_bytes((cache.dir / f"{b.key}.{ext}").read_bytes())
    calls = compiles(monkeypatch)
    again = kc.compile_source(SOURCE, name="double", cache=cache)
    assert again.spirv == a.spirv and not again.from_cache and len(calls) == 1
    assert kc.compile_source(SOURCE, name="double", cache=cache).from_cache  # repaired


@pytest.mark.parametrize("damage", [
    lambda good: b"\x00" * 64,                                    # not SPIR-V at all
    lambda good: good[:20] + bytes(len(good) - 20),               # a valid header, then zeros (lavapipe crashes)
    lambda good: good[:-4],                                       # one word short: no OpFunctionEnd
    lambda good: good[:-8] + b"\xff" * 8,                         # word counts that run past the end
], ids=["not-spirv", "zeros-after-header", "one-word-short", "counts-past-end"])
def test_consistently_corrupt_blob_is_rebuilt(cache, monkeypatch, damage):
    good = kc.compile_source(SOURCE, name="double", cache=cache)
    forge(cache, good.key, damage(good.spirv))
    calls = compiles(monkeypatch)
    again = kc.compile_source(SOURCE, name="double", cache=cache)
    assert again.spirv == good.spirv and len(calls) == 1
    assert (cache.dir / f"{good.key}.spv").read_bytes() == good.spirv


def test_blob_the_driver_refuses_is_dropped_and_compiled_once_more(cache, monkeypatch):
    good = kc.compile_source(SOURCE, name="double", cache=cache)
    damaged = good.spirv[:8] + b"\xff\xff\x00\x00" + good.spirv[12:]  # another generator word: well formed
    forge(cache, good.key, damaged)
    assert cache.get(good.key) == damaged
    seen = []

    def create(spirv: bytes) -> str:  # stands in for Device.pipeline and a driver
        seen.append(spirv)
        if spirv != good.spirv:
            raise KgenError("vkCreateComputePipelines: VK_ERROR_UNKNOWN")
        return "pipeline"
    calls = compiles(monkeypatch)
    assert kc.create_with(SOURCE, create, name="double", cache=cache) == "pipeline"
    assert seen == [damaged, good.spirv] and len(calls) == 1
    assert cache.get(good.key) == good.spirv


def test_refusal_of_a_fresh_binary_is_not_retried(cache, monkeypatch):
    calls = compiles(monkeypatch)

    def create(spirv: bytes):
        raise KgenError("refused")
    with pytest.raises(KgenError, match="refused"):
        kc.create_with(SOURCE, create, name="double", cache=cache)
    assert len(calls) == 1


@pytest.mark.parametrize("which", ["spv", "json"])
def test_entry_that_is_a_directory_is_a_miss(cache, which):
    key = kc.cache_key(SOURCE, find_compiler())
    (cache.dir / f"{key}.{which}").mkdir(parents=True)
    with pytest.warns(RuntimeWarning, match="Is a directory"):  # left alone: never deleted here
        result = kc.compile_source(SOURCE, name="double", cache=cache)
    assert result.spirv[:4] == kc.SPIRV_MAGIC and not result.from_cache


def _finishes(fn, seconds: float = 20.0):
    """fn() on a daemon thread: its result, or a failure when it blocks (a hung open of a FIFO
    would otherwise hang the test run)."""
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{fn} still blocked after {seconds} s"
    return out["value"]


@pytest.mark.parametrize("which", ["spv", "json"])
def test_entry_that_is_a_fifo_is_a_miss_and_never_hangs(cache, which):
    key = kc.cache_key(SOURCE, find_compiler())
    cache.dir.mkdir(parents=True)
    os.mkfifo(cache.dir / f"{key}.{which}")
    result = _finishes(lambda: kc.compile_source(SOURCE, name="double", cache=cache))
    assert result.spirv[:4] == kc.SPIRV_MAGIC and not result.from_cache
    assert kc.compile_source(SOURCE, name="double", cache=cache).from_cache  # the FIFO was replaced


def test_pipeline_cache_file_that_is_a_fifo_or_a_folder_is_cold(tmp_path):
    from kgen.runtime import pipeline_cache
    caps = Caps.from_dict(json.loads((ROOT / "kgen" / "data" / "lavapipe.json").read_text()))
    fifo, folder = tmp_path / "cache.bin", tmp_path / "folder.bin"
    os.mkfifo(fifo)
    folder.mkdir()
    assert _finishes(lambda: pipeline_cache.load(fifo, caps)) == b""
    assert pipeline_cache.load(folder, caps) == b""


# --- families 10 and 21: compilers that hang or crash --------------------------------------------
def fake_compiler(tmp_path: Path, body: str) -> Compiler:
    """A `glslang` that runs `body` (sh) when compiling; it answers --version at once."""
    script = tmp_path / "glslang"
    script.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo fake 1.0; exit 0; fi\n{body}\n')
    script.chmod(0o755)
    return Compiler("glslang", script, "fake 1.0")


def gone(pid: int) -> bool:
    """No such process, or a zombie (dead, waiting for whoever adopted it to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_gone(pids: list[int], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(gone(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def read_pids(path: Path, count: int, seconds: float = 20.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.is_file() and len(words := path.read_text().split()) >= count:
            return [int(w) for w in words[:count]]
        time.sleep(0.05)
    raise AssertionError(f"the fake compiler never wrote {count} pid(s) to {path}")


def test_hanging_compiler_times_out_and_its_whole_group_is_killed(tmp_path, cache, monkeypatch):
    pids = tmp_path / "pids"
    # a wrapper that leaves a child of its own running: the group kill must take both
    compiler = fake_compiler(tmp_path, f'sleep 30 &\necho $$ $! > {pids}\nwait')
    monkeypatch.setenv("KGEN_COMPILE_TIMEOUT", "1")
    start = time.monotonic()
    with pytest.raises(CompileError, match=r"timed out after 1 s.*KGEN_COMPILE_TIMEOUT"):
        kc.compile_source(SOURCE, name="hangs", cache=cache, compiler=compiler)
    assert time.monotonic() - start < 10
    assert wait_gone(read_pids(pids, 2)), "the compiler or its child outlived the timeout"


def test_compiler_dies_with_a_killed_caller(tmp_path):
    pidfile = tmp_path / "pid"
    compiler = fake_compiler(tmp_path, f"echo $$ > {pidfile}\nexec sleep 30")
    caller = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; from kgen import compile as kc; from kgen.toolchain import Compiler\n"
        f"kc.compile_source({SOURCE!r}, name='hangs', cache=kc.SpirvCache(Path(sys.argv[1])), "
        f"compiler=Compiler('glslang', Path({str(compiler.path)!r}), 'fake 1.0'))"), str(tmp_path / "c")],
        cwd=ROOT, env={**os.environ, "KGEN_COMPILE_TIMEOUT": "0"})
    try:
        [pid] = read_pids(pidfile, 1)
        caller.send_signal(signal.SIGKILL)
        caller.wait(10)
        assert wait_gone([pid]), "the compiler outlived the process that started it"
    finally:
        caller.kill()
        caller.wait()


def test_compiler_killed_by_a_signal_is_named(tmp_path, cache):
    compiler = fake_compiler(tmp_path, "kill -SEGV $$")
    with pytest.raises(CompileError, match="killed by SIGSEGV") as info:
        kc.compile_source(SOURCE, name="crashes", cache=cache, compiler=compiler)
    assert "crashes" in str(info.value)


def test_compiler_that_hangs_on_version_is_a_toolchain_error(tmp_path, monkeypatch, fresh_discovery):
    script = tmp_path / "glslang"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    monkeypatch.setenv("KGEN_GLSLANG", str(script))
    monkeypatch.setenv("KGEN_COMPILE_TIMEOUT", "0.5")
    start = time.monotonic()
    with pytest.raises(ToolchainError, match=r"--version did not finish within 0.5 s.*KGEN_COMPILE_TIMEOUT"):
        toolchain.find_compiler()
    assert time.monotonic() - start < 10


def test_override_that_crashes_on_the_probe_is_named(tmp_path, monkeypatch, fresh_discovery):
    monkeypatch.setenv("KGEN_GLSLANG", str(fake_compiler(tmp_path, "kill -SEGV $$").path))
    with pytest.raises(ToolchainError, match="KGEN_GLSLANG.*cannot compile.*killed by SIGSEGV"):
        toolchain.find_compiler()
