"""Binaries a driver refuses, and failures around compiling: a cached binary that the driver
rejects is dropped and rebuilt (on disk and in the recipe's in-process memo) and the call still
matches the reference; an error that stops the tuner's compile-ahead thread fails the tune; the
first plans of two threads probe a device once; a compiler's exit status reaches CompileError
and decides whether its failure is transient."""
import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import kgen
from kgen import compile as kc
from kgen import reference
from kgen.errors import CompileError, KnobError, UnsupportedVariant
from kgen.planning import probe, recipe
from kgen.runtime import open_device
from kgen.runtime import InvalidArgument
from kgen.runtime.context import Device
from kgen.runtime.vk import VulkanError
from kgen.tools.suites import Case
from kgen.toolchain import Compiler, find_compiler
from kgen.tune import Limits, candidates, driver, tune
from kgen.tune.driver import _compile_failure
from kgen.tunedb import TuningDB
from kgen.tunedb.records import TRANSIENT

SHAPE = Case("t", heads_kv=2, gqa=1, n_q=16, n_kv=256, head_k=64, head_v=64).shapes()
VK_ERROR_UNKNOWN = -13


def nmse(out, ref) -> float:
    return float(np.sum((out - ref) ** 2) / np.sum(ref ** 2))


def inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, 2, 8, 64), dtype=np.float32)
    k = rng.standard_normal((1, 2, 96, 64), dtype=np.float32)
    v = rng.standard_normal((1, 2, 96, 64), dtype=np.float32)
    return q, k, v


# --- a cached binary the driver refuses ------------------------------------------------------------
def test_a_cached_binary_the_driver_refuses_is_rebuilt_and_the_call_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("KGEN_CACHE_DIR", str(tmp_path / "spirv"))
    recipe._compiled.cache_clear()
    q, k, v = inputs()
    with kgen.plan(q, k, v) as first:
        fa = first.recipe.fa
    key = kc.cache_key(fa.source(), find_compiler())
    cache = kc.SpirvCache()
    good = cache.get(key)
    # another generator word: well formed, passes the cache's checks; this driver refuses it
    damaged = good[:8] + b"\xff\xff\x00\x00" + good[12:]
    cache.put(key, damaged)
    assert cache.get(key) == damaged
    recipe._compiled.cache_clear()
    refused, real = [], Device.pipeline

    def driver_pipeline(self, spirv, **options):
        if bytes(spirv) == damaged:
            refused.append(options["name"])
            raise VulkanError("vkCreateComputePipelines", VK_ERROR_UNKNOWN)
        return real(self, spirv, **options)
    monkeypatch.setattr(Device, "pipeline", driver_pipeline)
    for seed in (1, 2):   # the second call is served the rebuilt binary, from memo or disk
        q, k, v = inputs(seed)
        out = kgen.attention(q, k, v)
        assert nmse(out, reference.attention(q, k, v)) <= 5e-4
    assert refused == [fa.name]
    assert cache.get(key) == good
    recipe._compiled.cache_clear()


def test_a_device_that_cannot_run_a_cached_binary_is_not_given_a_rebuild(tmp_path, monkeypatch):
    cache = kc.SpirvCache(tmp_path / "c")
    source = "#version 450\nlayout(local_size_x = 64) in;\nvoid main() {}\n"
    first = kc.compile_source(source, name="k", cache=cache)
    runs, real = [], kc.run_tool
    monkeypatch.setattr(kc, "run_tool", lambda cmd: runs.append(cmd) or real(cmd))

    def unsupported(spirv):
        raise UnsupportedVariant("k", "needs subgroup size 64")
    with pytest.raises(UnsupportedVariant):
        kc.create_with(source, unsupported, name="k", cache=cache)
    assert runs == [] and cache.get(first.key) == first.spirv   # the refusal was about the device


@pytest.mark.parametrize("damage", ["zeros behind the header", "cut short", "word count past the end"])
def test_a_module_that_only_starts_as_spirv_never_reaches_the_driver(tmp_path, damage):
    good = kc.compile_source("#version 450\nlayout(local_size_x = 64) in;\nvoid main() {}\n", name="k",
                             cache=kc.SpirvCache(tmp_path / "c")).spirv
    blob = {"zeros behind the header": good[:20] + bytes(len(good) - 20), "cut short": good[:-4],
            "word count past the end": good[:-4] + b"\x38\x00\x02\x00"}[damage]
    with pytest.raises(InvalidArgument, match="spirv.*OpFunctionEnd"):
        open_device(None).pipeline(blob, name=damage)


# --- an error that stops the compile-ahead thread -------------------------------------------------
def test_an_oserror_in_the_compile_ahead_thread_fails_the_tune(tmp_path, monkeypatch):
    def disk_full(variants, **kwargs):
        raise OSError(28, "No space left on device")
        yield
    monkeypatch.setattr(driver, "compile_iter", disk_full)
    with TuningDB(tmp_path / "t.sqlite") as db, pytest.raises(OSError, match="No space left"):
        tune(SHAPE, db, strategy="exhaustive", limits=Limits(max_evals=2, runs=3))


def test_a_bad_knob_read_in_the_compile_ahead_thread_fails_the_tune(tmp_path, monkeypatch):
    monkeypatch.setenv("KGEN_JOBS", "many")
    cands, _ = candidates(SHAPE, open_device(None).caps)
    ahead = driver._CompileAhead(cands[:2])
    with pytest.raises(KnobError, match="KGEN_JOBS"):
        ahead.error_of(cands[0].variant.uri)
    ahead.thread.join(10)


# --- the fragment probe, first plans of two threads ------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ProbedCaps:
    has_coopmat1: bool = True
    subgroup_size_control: bool = True
    coopmat1_fragments: tuple = ()


class FakeDevice:
    caps = ProbedCaps()


def test_two_threads_first_plans_probe_a_device_once(monkeypatch):
    import kgen.runtime
    monkeypatch.setattr(kgen.runtime, "open_device", lambda device: device)
    probes = []

    def slow_probe(device):
        probes.append(device)
        time.sleep(0.2)   # long enough for the other thread to arrive meanwhile
        return ("layout",)
    monkeypatch.setattr(probe, "probe_or_warn", slow_probe)
    dev = FakeDevice()
    threads = [threading.Thread(target=probe.open_for_kernels, args=(dev,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert probes == [dev] and dev.caps.coopmat1_fragments == ("layout",)


# --- the compiler's exit status --------------------------------------------------------------------
def fake_compiler(tmp_path: Path, body: str) -> Compiler:
    script = tmp_path / "glslang"
    script.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo fake 1.0; exit 0; fi\n{body}\n')
    script.chmod(0o755)
    return Compiler("glslang", script, "fake 1.0")


@pytest.mark.parametrize("body, status", [("kill -SEGV $$", -11), ("kill -KILL $$", -9), ("exit 3", 3)])
def test_compile_error_carries_the_exit_status(tmp_path, body, status):
    with pytest.raises(CompileError) as info:
        kc.compile_source("#version 450\nvoid main() {}\n", name="k", cache=kc.SpirvCache(tmp_path / "c"),
                          compiler=fake_compiler(tmp_path, body))
    assert info.value.returncode == status


def test_transient_failure_follows_the_exit_status_not_the_wording():
    c = candidates(SHAPE, open_device(None).caps)[0][0]
    killed = _compile_failure(c, CompileError("u", "a compiler that words a crash its own way", returncode=-9))
    failed = _compile_failure(c, CompileError("u", "", returncode=1))
    assert killed.reason.startswith(TRANSIENT) and not failed.reason.startswith(TRANSIENT)
