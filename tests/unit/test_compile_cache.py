"""The SPIR-V cache: content-addressed, atomic, corruption-tolerant, one compile per source."""
import json
import subprocess

import pytest

from kgen import compile as kc
from kgen.errors import CompileError
from kgen.toolchain import find_compiler

SOURCE = """#version 450
layout(local_size_x = 64) in;
layout(std430, binding = 0) buffer Buf { float data[]; };
void main() { data[gl_GlobalInvocationID.x] *= 2.0; }
"""


@pytest.fixture
def cache(tmp_path):
    return kc.SpirvCache(tmp_path / "cache")


def count_compiles(monkeypatch):
    calls = []
    real = subprocess.run
    compiler_path = str(find_compiler().path)

    def spy(cmd, *a, **k):
        if str(cmd[0]) == compiler_path:
            calls.append(cmd)
        return real(cmd, *a, **k)
    monkeypatch.setattr(kc.subprocess, "run", spy)
    return calls


def test_ten_requests_one_compile(cache, monkeypatch):
    calls = count_compiles(monkeypatch)
    results = [kc.compile_source(SOURCE, name="double", cache=cache) for _ in range(10)]
    assert len(calls) == 1
    assert [r.from_cache for r in results] == [False] + [True] * 9
    assert len({r.spirv for r in results}) == 1
    assert results[0].spirv[:4] == b"\x03\x02\x23\x07"  # SPIR-V magic, little-endian


def test_key_changes_with_one_character_and_not_with_rerender():
    compiler = find_compiler()
    key = kc.cache_key(SOURCE, compiler)
    assert kc.cache_key(str(SOURCE), compiler) == key
    assert kc.cache_key(SOURCE.replace("2.0", "3.0"), compiler) != key
    other = type(compiler)(compiler.kind, compiler.path, compiler.version + " patched")
    assert kc.cache_key(SOURCE, other) != key


def test_corrupt_entry_is_rebuilt(cache, monkeypatch):
    first = kc.compile_source(SOURCE, name="double", cache=cache)
    blob = cache.dir / f"{first.key}.spv"
    blob.write_bytes(b"garbage")
    calls = count_compiles(monkeypatch)
    again = kc.compile_source(SOURCE, name="double", cache=cache)
    assert len(calls) == 1 and not again.from_cache and again.spirv == first.spirv
    assert blob.read_bytes() == first.spirv


def test_missing_sidecar_is_a_miss(cache):
    first = kc.compile_source(SOURCE, name="double", cache=cache)
    (cache.dir / f"{first.key}.json").unlink()
    assert cache.get(first.key) is None
    meta_bad = cache.dir / f"{first.key}.json"
    meta_bad.write_text("{not json")
    assert cache.get(first.key) is None


def test_compile_error_names_variant_and_shows_lines_and_caches_nothing(cache):
    broken = SOURCE.replace("data[gl_GlobalInvocationID.x] *= 2.0;", "data[gl_GlobalInvocationID.x] *= undefined_thing;")
    with pytest.raises(CompileError) as info:
        kc.compile_source(broken, name="fa_broken_uri", cache=cache)
    text = str(info.value)
    assert "fa_broken_uri" in text and "undefined_thing" in text
    assert ">    4 |" in info.value.excerpt  # the offending line, marked and numbered
    assert not cache.dir.exists() or not any(cache.dir.iterdir())


def test_sidecar_records_hash_and_compiler(cache):
    r = kc.compile_source(SOURCE, name="double", cache=cache)
    meta = json.loads((cache.dir / f"{r.key}.json").read_text())
    assert meta["bytes"] == len(r.spirv) and meta["name"] == "double"
    assert meta["compiler"] == find_compiler().identity


def test_parallel_processes_share_the_cache(tmp_path):
    """Several processes compiling the same source at once leave one valid entry."""
    import concurrent.futures as cf
    cache_dir = tmp_path / "shared"
    with cf.ProcessPoolExecutor(max_workers=2) as pool:
        blobs = list(pool.map(_compile_in_child, [str(cache_dir)] * 4))
    assert len(set(blobs)) == 1
    assert len(list(cache_dir.glob("*.spv"))) == 1 and not list(cache_dir.glob("*.tmp"))


def _compile_in_child(cache_dir: str) -> bytes:
    from pathlib import Path
    return kc.compile_source(SOURCE, name="double", cache=kc.SpirvCache(Path(cache_dir))).spirv
