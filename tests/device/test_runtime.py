"""The Vulkan runtime (`kgen.runtime`) on lavapipe: buffers, pipelines, launches, sequences,
the pipeline cache and deterministic cleanup. Every test needs a Vulkan device (lavapipe in CI).

The pipeline cache and the SPIR-V cache go to a temporary folder (KGEN_CACHE_DIR), never to
the user's ~/.cache.
"""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from kgen import abi
from kgen.compile import compile_source
from kgen.errors import UnsupportedVariant
from kgen.runtime import handles, memory
from kgen.runtime.context import Device
from kgen.runtime.errors import ClosedError, InvalidArgument
from kgen.runtime.features import FEATURES
from kgen.runtime.vk import VulkanError

# out[i] = a * x[i] + i. `precise` forbids fusing into an fma, so numpy's two roundings match.
SAXPY = """#version 450
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 5) writeonly buffer O { float o[]; };
layout(push_constant) uniform P { uint n; float a; } pc;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < pc.n) {
        precise float r = pc.a * x[i] + float(i);
        o[i] = r;
    }
}
"""
N = 1000
A = 1.75
GROUPS = (math.ceil(N / 64), 1, 1)


def push_block(n: int = N, a: float = A) -> bytes:
    """The shader's two fields as a prefix of the whole abi block, which is always pushed."""
    return struct.pack("<If", n, a).ljust(abi.PUSH_BYTES, b"\0")


def saxpy_ref(x: np.ndarray, a: float = A) -> np.ndarray:
    return np.float32(a) * x + np.arange(x.size, dtype=np.float32)


@pytest.fixture(scope="module")
def spirv(cache_root) -> bytes:
    return compile_source(SAXPY, name="saxpy").spirv


@pytest.fixture(scope="module")
def dev(cache_root):
    with Device() as device:
        yield device


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(7).standard_normal(N).astype(np.float32)


# --- lifetime (first, so that no other Device is open yet) --------------------------------------

def test_open_close_three_times_leaves_nothing(cache_root, spirv) -> None:
    before = handles.live_objects()
    for _ in range(3):
        d = Device()
        kernel = d.pipeline(spirv, name="saxpy")
        a, b = d.buffer(N * 4), d.buffer(N * 4)
        seq = d.sequence([(kernel, {0: a, 5: b}, push_block(), GROUPS)])
        seq.run()
        d.pool.release(d.pool.acquire(5000))
        d.close()  # closes the sequence, kernel and buffers still open
        assert handles.live_objects() == before
        d.close()
        a.close()
        seq.close()
        assert a.closed and seq.closed
        with pytest.raises(ClosedError):
            kernel({0: a}, push_block(), GROUPS)
        with pytest.raises(ClosedError):
            d.buffer(16)
    assert handles.live_objects() == before


def test_bad_index_names_the_range_and_leaks_nothing(cache_root) -> None:
    before = handles.live_objects()
    with pytest.raises(InvalidArgument, match=r"index=99.*0\.\.\d"):
        Device(99)
    assert handles.live_objects() == before


def test_context_manager_closes(cache_root) -> None:
    with Device() as d:
        buf = d.buffer(64)
    assert d.closed and buf.closed
    with pytest.raises(ClosedError):
        buf.read()


# --- features ----------------------------------------------------------------------------------

def test_enabled_features_match_caps(dev) -> None:
    caps, on = dev.caps, dev.enabled_features
    assert on <= {f.name for f in FEATURES}
    expected = {"shaderFloat16": caps.shader_float16, "shaderInt8": caps.shader_int8,
                "storageBuffer16BitAccess": caps.storage_buffer_16bit,
                "storageBuffer8BitAccess": caps.storage_buffer_8bit,
                "subgroupSizeControl": caps.subgroup_size_control,
                "computeFullSubgroups": caps.compute_full_subgroups,
                "bufferDeviceAddress": caps.buffer_device_address,
                "cooperativeMatrix": caps.has_coopmat1, "shaderBFloat16Type": caps.shader_bfloat16}
    assert {name for name, has in expected.items() if has} <= on
    assert not {name for name, has in expected.items() if not has} & on
    assert "vulkanMemoryModel" in on  # lavapipe has it, and every kgen kernel may use it


# --- launches ----------------------------------------------------------------------------------

def test_saxpy_is_exact_and_timed(dev, spirv, x) -> None:
    kernel = dev.pipeline(spirv, name="saxpy")
    with dev.buffer(N * 4) as xb, dev.buffer(N * 4) as ob:
        xb.write(x)
        us = kernel({0: xb, 5: ob}, push_block(), GROUPS)
        assert isinstance(us, float) and math.isfinite(us) and us > 0
        np.testing.assert_array_equal(np.frombuffer(ob.read(), np.float32), saxpy_ref(x))
        # The same binding as a sequence (None: the dummy buffer), untimed.
        ob.write(bytes(N * 4))
        assert kernel([xb, None, None, None, None, ob], push_block(), GROUPS, timed=False) is None
        np.testing.assert_array_equal(np.frombuffer(ob.read(), np.float32), saxpy_ref(x))


def test_pipeline_is_created_once(dev, spirv) -> None:
    assert dev.pipeline(spirv, name="saxpy") is dev.pipeline(spirv, name="other name, same code")
    sized = dev.pipeline(spirv, name="saxpy", required_subgroup_size=dev.caps.subgroup_size,
                         full_subgroups=dev.caps.compute_full_subgroups)
    assert sized is not dev.pipeline(spirv, name="saxpy")


def test_subgroup_size_the_device_lacks_is_unsupported(dev, spirv) -> None:
    with pytest.raises(UnsupportedVariant, match="required_subgroup_size=3"):
        dev.pipeline(spirv, name="odd", required_subgroup_size=3)


def test_bad_spirv_is_rejected_before_vulkan(dev) -> None:
    with pytest.raises(InvalidArgument, match="spirv"):
        dev.pipeline(b"#version 450\n", name="glsl-not-spirv")


def test_pipeline_failure_names_the_kernel(dev, spirv, monkeypatch) -> None:
    from kgen.runtime import pipeline

    def fail(kind, call, *args):
        raise VulkanError(call, -3)  # VK_ERROR_INITIALIZATION_FAILED
    monkeypatch.setattr(pipeline.handles, "create", fail)
    with pytest.raises(VulkanError, match="fa_broken"):
        dev.pipeline(spirv, name="fa_broken", required_subgroup_size=dev.caps.subgroup_size)


def test_sequence_resubmits_consistently(dev, spirv, x) -> None:
    kernel = dev.pipeline(spirv, name="saxpy")
    xb, yb, zb = dev.buffer(N * 4), dev.buffer(N * 4), dev.buffer(N * 4)
    xb.write(x)
    # The second dispatch reads what the first wrote: the barrier between them matters.
    seq = dev.sequence([(kernel, {0: xb, 5: yb}, push_block(), GROUPS),
                        (kernel, {0: yb, 5: zb}, push_block(), GROUPS)])
    want = saxpy_ref(saxpy_ref(x))
    assert seq.wait() == []  # nothing ran yet: no block on unwritten queries
    for _ in range(10):
        zb.write(bytes(N * 4))
        times = seq.run()
        assert len(times) == 2 and all(math.isfinite(t) and t > 0 for t in times)
        np.testing.assert_array_equal(np.frombuffer(zb.read(), np.float32), want)
    # New input, same recording: buffers are bound by handle, so new contents flow through.
    xb.write(x * 2)
    assert seq.run(wait=False) is None
    np.testing.assert_array_equal(np.frombuffer(zb.read(), np.float32), saxpy_ref(saxpy_ref(x * 2)))
    assert len(seq.wait()) == 2  # collected by the read, still reported
    seq.close()
    seq.close()
    with pytest.raises(ClosedError):
        seq.run()
    for b in (xb, yb, zb):
        b.close()


def test_joined_steps_share_one_timed_group(dev, spirv, x) -> None:
    kernel = dev.pipeline(spirv, name="saxpy")
    xb, yb, zb, wb, vb = (dev.buffer(N * 4) for _ in range(5))
    xb.write(x)
    zb.write(x * 3)
    # Two independent passes side by side, then a barrier and one that reads the first's output.
    with dev.sequence([(kernel, {0: xb, 5: yb}, push_block(), GROUPS),
                       (kernel, {0: zb, 5: wb}, push_block(), GROUPS, True),
                       (kernel, {0: yb, 5: vb}, push_block(), GROUPS, False)]) as seq:
        for _ in range(3):
            times = seq.run()
            assert len(times) == 3 and times[1] == 0.0
            assert all(math.isfinite(t) and t > 0 for t in (times[0], times[2]))
        np.testing.assert_array_equal(np.frombuffer(wb.read(), np.float32), saxpy_ref(x * 3))
        np.testing.assert_array_equal(np.frombuffer(vb.read(), np.float32), saxpy_ref(saxpy_ref(x)))
    with pytest.raises(InvalidArgument, match=r"steps\[0\]\[4\].*nothing before it to join"):
        dev.sequence([(kernel, {0: xb, 5: yb}, push_block(), GROUPS, True)])
    with pytest.raises(InvalidArgument, match=r"steps\[1\]\[4\].*True or False"):
        dev.sequence([(kernel, {0: xb, 5: yb}, push_block(), GROUPS),
                      (kernel, {0: zb, 5: wb}, push_block(), GROUPS, 1)])
    for b in (xb, yb, zb, wb, vb):
        b.close()


def test_sequence_refuses_closed_buffers(dev, spirv) -> None:
    kernel = dev.pipeline(spirv, name="saxpy")
    a, b = dev.buffer(N * 4), dev.buffer(N * 4)
    with dev.sequence([(kernel, {0: a, 5: b}, push_block(), GROUPS)]) as seq:
        b.close()
        with pytest.raises(ClosedError, match="sequence"):
            seq.run()
    a.close()


# --- argument errors: raised before anything is submitted ---------------------------------------

@pytest.fixture
def no_submit(dev, monkeypatch):
    def fail(*args):
        raise AssertionError("reached the launch path")
    monkeypatch.setattr(dev.launcher, "launch", fail)


def test_wrong_push_length(dev, spirv, no_submit) -> None:
    kernel = dev.pipeline(spirv, name="saxpy")
    with pytest.raises(InvalidArgument, match=rf"push.*8 bytes.*PUSH_BYTES = {abi.PUSH_BYTES}") as err:
        kernel({}, struct.pack("<If", N, A), GROUPS)
    assert err.value.argument == "push" and "saxpy" in str(err.value)


def test_too_many_groups(dev, spirv, no_submit) -> None:
    kernel = dev.pipeline(spirv, name="saxpy")
    limit = dev.caps.max_workgroup_count[1]
    with pytest.raises(InvalidArgument, match=rf"groups\[1\]={limit + 1}.*{limit}.*maxComputeWorkGroupCount\[1\]"):
        kernel({}, push_block(), (1, limit + 1, 1))
    with pytest.raises(InvalidArgument, match=r"groups\[0\]=0"):
        kernel({}, push_block(), (0, 1, 1))
    with pytest.raises(InvalidArgument, match="integer"):
        kernel({}, push_block(), (1.5, 1, 1))
    with pytest.raises(InvalidArgument, match="groups"):
        dev.sequence([(kernel, {}, push_block(), (1, 1, limit + 1))])


def test_bad_bindings(dev, spirv, no_submit) -> None:
    kernel = dev.pipeline(spirv, name="saxpy")
    past = len(abi.BINDINGS)
    with pytest.raises(InvalidArgument, match=rf"binding\(s\) \[{past}\]"):
        kernel({past: dev.dummy}, push_block(), GROUPS)
    with pytest.raises(InvalidArgument, match=r"buffers\[0\]"):
        kernel({0: b"not a buffer"}, push_block(), GROUPS)


def test_buffer_sizes_checked_before_vulkan(dev, monkeypatch) -> None:
    def fail(*args):
        raise AssertionError("a Vulkan object was created")
    monkeypatch.setattr(memory.handles, "create", fail)
    with pytest.raises(InvalidArgument, match="nbytes=0.*maxStorageBufferRange"):
        dev.buffer(0)
    limit = dev.caps.max_storage_buffer_range
    with pytest.raises(InvalidArgument, match=rf"nbytes={limit + 1}.*1..{limit} \(maxStorageBufferRange\)"):
        dev.buffer(limit + 1)
    with pytest.raises(InvalidArgument, match="nbytes"):
        dev.pool.acquire(-4)


# --- buffers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "staged"])
@pytest.mark.parametrize("size, offset", [(1, 0), (3, 1), (4097, 5), (70001, 6999)])
def test_write_read_round_trip(dev, monkeypatch, mapped, size, offset) -> None:
    # staged: device buffers are not mapped, as on a discrete GPU, and the staging buffer holds
    # 4 KiB, so a large transfer goes in chunks.
    monkeypatch.setattr(dev.memory_types, "map_device_buffers", mapped)
    if mapped:
        # A host-visible type, which Vulkan guarantees for every buffer: a discrete GPU's
        # device-local memory is not (the H100's), so preferring it would not map.
        monkeypatch.setitem(dev.memory_types.prefs, "device", [memory._MAPPABLE])
    monkeypatch.setattr(memory, "STAGING_BYTES", 4096)
    data = np.random.default_rng(size).integers(0, 256, size - offset, dtype=np.uint8).tobytes()
    with dev.buffer(size) as buf:
        assert buf.host_visible == mapped
        buf.write(data, offset=offset)
        assert buf.read(len(data), offset=offset) == data
        assert buf.read(offset=offset) == data
        into = np.empty(len(data), np.uint8)
        buf.read_into(into, offset=offset)
        assert into.tobytes() == data
        with pytest.raises(InvalidArgument, match="offset"):
            buf.write(b"xx", offset=size - 1)
    if dev._staging is not None:
        dev._staging.close()
        dev._staging = None  # the next test gets a staging buffer of the normal size


def test_non_contiguous_array_is_written_in_order(dev) -> None:
    a = np.arange(64, dtype=np.float32).reshape(8, 8).T
    with dev.buffer(a.nbytes) as buf:
        buf.write(a)
        np.testing.assert_array_equal(np.frombuffer(buf.read(), np.float32), a.ravel())


def test_pool_reuses_by_size_class(dev) -> None:
    first = dev.pool.acquire(1000)
    assert first.nbytes == memory.size_class(1000, dev.caps.max_storage_buffer_range) >= 1000
    live = handles.live_objects().get("Buffer", 0)
    dev.pool.release(first)
    dev.pool.release(first)  # twice: harmless
    again = dev.pool.acquire(900)
    assert again is first and handles.live_objects().get("Buffer", 0) == live
    dev.pool.release(again)
    dev.pool.clear()
    assert first.closed


def test_size_classes() -> None:
    limit = 1 << 27
    for n in (1, 255, 256, 257, 1000, 4096, 4097, 10**6, limit - 1, limit):
        c = memory.size_class(n, limit)
        assert n <= c <= min(limit, n + max(255, n // 4)) and c % 256 == 0 and memory.size_class(c, limit) == c


# --- pipeline cache ----------------------------------------------------------------------------

def test_pipeline_cache_is_saved_and_reused(cache_root, spirv) -> None:
    with Device() as d:
        path = d.pipeline_cache.path
        path.unlink(missing_ok=True)
        d.pipeline(spirv, name="saxpy")
    assert path.parent == cache_root / "pipelines" and path.stat().st_size > 0
    with Device() as d:
        assert d.pipeline_cache.loaded == path.read_bytes()
    for junk in (b"garbage" * 10,                       # not a cache
                 path.read_bytes()[:16] + bytes(16)):   # this device's header, another UUID
        path.write_bytes(junk)
        with Device() as d:
            assert d.pipeline_cache.loaded == b""
            d.pipeline(spirv, name="saxpy")({}, push_block(), GROUPS)
        assert path.read_bytes() != junk  # replaced by the driver's own data


def test_drop_pipeline_forgets_the_kernel_and_keeps_one_in_use():
    from kgen.planning.plan import Plan
    from kgen.runtime import open_device
    from kgen.tools.suites import Case
    s = Case("drop", 1, 1, 4, 64, head_k=64, head_v=64).shapes()
    dev = open_device(None)
    with Plan(s) as plan:
        kernel = plan.kernel
        assert dev.drop_pipeline(kernel) is False and kernel.handle is not None   # a plan records it
    assert dev.drop_pipeline(kernel) is True
    assert kernel.handle is None and kernel not in dev.kernels.values()
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((1, 1, 4, 64), dtype=np.float32), rng.standard_normal((1, 1, 64, 64), dtype=np.float32)
    with Plan(s) as again:                       # built anew
        assert again.kernel is not kernel and again.kernel.handle is not None
        assert np.isfinite(again(q, k, k)).all()
