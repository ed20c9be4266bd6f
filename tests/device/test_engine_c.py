"""The C dispatcher of `kgen export --format c` inside a minimal C engine (c_engine/host.c: its own
instance, device, buffers and command buffer): every call right against the float64 reference
(NMSE <= 5e-4, no NaN or Inf), with push descriptors and with descriptor pools, with the
validation layer reporting nothing under KGEN_VALIDATION=1; the kernel and split count it picks
are what kgen.plan picks from the same tuning DB; bad calls and buffers are refused by name."""
from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import kgen
from kgen import quant, reference
from kgen.identity import BuildIdentity, DeviceIdentity, kernel_digest
from kgen.kvtensor import KVTensor
from kgen.shapes import dense_strides, fold_for_layouts, shapes_of, strided_copy, strided_extent
from kgen.space import default_variant
from kgen.tools import export as ex
from kgen.tunedb import TuningDB, Winner
from kgen.types import KV_TYPES, KvType
from kgen.errors import InvalidVariant
from kgen.space import why_invalid
from kgen.paths import coopmat1
from kgen.passes import passes_before
from kgen.variant import FEATURES, PathKind, Schedule, Variant

HOST = Path(__file__).resolve().parent / "c_engine" / "host.c"
FEATURE_BIT = {f: 1 << i for i, f in enumerate(FEATURES)}
KV_INDEX = {t.label: i for i, t in enumerate(KV_TYPES)}
NOT_COVERED, INVALID = 1, -1


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    shape: tuple                 # B, Hq, Hkv, Nq, Nkv, Dk, Dv
    kv_type: str = "f16"
    mask: str | None = None      # "rows": (B, 1, Nq, Nkv) padded rows; "heads": (B, Hq, Nq, Nkv) padded rows
                                 # and planes, as ggml pads them; "one": (1, 1, 1, Nkv)
    causal: bool = False
    window: int = 0
    softcap: float = 0.0
    alibi: float = 0.0
    sinks: bool = False
    splits: int = 1
    fused: bool = False
    kv_f16: bool = False
    pad_blocks: int = 0          # K/V rows padded and the cache offset: a view into a larger cache
    lead_blocks: int = 0
    ggml_layout: bool = False    # Q and O as ggml lays them out: (B, Nq, Hq, D)
    v_in_k: bool = False         # V is the first Dv columns of K's rows (MLA): K's buffer serves both
    regs: bool = False           # coopmat1: a register-softmax kernel (its mask fragment pass with a mask)
    mask_f32: bool = False       # the engine's mask is f32: the dispatcher's pass copies it to f16 first


CASES = (
    Case("prefill-mask-gqa", (2, 4, 2, 33, 200, 64, 64), mask="rows", mask_f32=True),
    Case("decode-split-reduce", (1, 8, 2, 1, 300, 64, 64), causal=True, splits=6),  # 5 whole-tile splits run
    Case("decode-split-fused", (1, 8, 2, 1, 1500, 64, 64), causal=True, splits=4, fused=True),
    Case("q8-kvf16-offset", (2, 4, 2, 17, 160, 64, 64), kv_type="q8_0", mask="one", kv_f16=True,
         pad_blocks=1, lead_blocks=3),
    Case("features", (1, 4, 4, 24, 96, 64, 64), mask="heads", causal=True, window=40, softcap=20.0,
         alibi=8.0, sinks=True, regs=True),
    Case("ggml-prefill", (2, 4, 2, 40, 260, 64, 64), mask="one", ggml_layout=True, regs=True),
    Case("ggml-decode-split", (1, 8, 2, 1, 5000, 64, 64), causal=True, splits=2, ggml_layout=True),
    Case("q4-decode", (2, 8, 4, 1, 400, 128, 128), kv_type="q4_0", mask="one", mask_f32=True),
    Case("mla-v-in-k", (1, 16, 1, 3, 120, 576, 512), causal=True, v_in_k=True),
    Case("ragged-causal", (1, 2, 2, 40, 24, 64, 64), causal=True),   # Nq > Nkv: the first rows see nothing
)


def _shapes(case: Case):
    b, hq, hkv, nq, nkv, dk, dv = case.shape
    q = np.zeros((b, hq, nq, dk))
    k, v = np.zeros((b, hkv, nkv, dk)), np.zeros((b, hkv, nkv, dv))
    if case.v_in_k:
        k = KVTensor.from_array(k, case.kv_type)
        v = KVTensor(k.data, case.kv_type, (b, hkv, nkv, dv), k.strides)
    mask_shape = {"rows": (b, 1, nq, nkv), "heads": (b, hq, nq, nkv), "one": (1, 1, 1, nkv)}
    mask = None if case.mask is None else np.zeros(mask_shape[case.mask])
    return shapes_of(q, k, v, mask=mask, causal=case.causal, window=case.window or None, softcap=case.softcap,
                     alibi_max_bias=case.alibi, sinks=np.zeros(hq) if case.sinks else None,
                     k_type=case.kv_type, v_type=case.kv_type)


def _kernel_shapes(case: Case):
    """What the kernel computes for `case` (kgen.shapes.fold_for_layouts, as the C plan folds)."""
    b, hq, _, nq, _, dk, dv = case.shape
    ggml = lambda d: (hq * d, d, nq * hq * d) if case.ggml_layout else dense_strides(nq, hq, d)
    return fold_for_layouts(_shapes(case), ggml(dk), ggml(dv))[0]


def _winner(case: Case, caps, path: PathKind) -> Winner | None:
    """The class of `case` tuned to `path`'s default variant with the case's knobs, or None where
    the path has no such variant (coopmat1 has no fused reduce)."""
    problem = _kernel_shapes(case).problem()
    features = problem.features + (("split_k",) if case.splits > 1 else ())
    try:
        v = default_variant(dataclasses.replace(problem, features=features), caps, path)
        v = v.replace(split_k=case.splits > 1, fused_reduce=case.fused, kv_f16=case.kv_f16 or v.kv_f16)
    except InvalidVariant:
        return None
    if case.regs and path is PathKind.COOPMAT1 and caps.coopmat1_fragments:
        regs = [k for k in coopmat1.candidates(problem, caps) if k["schedule"] is Schedule.REGS]
        assert regs, f"{case.name}: the probed device offers no register-softmax kernel"
        v = Variant(**regs[0])
    if why_invalid(v, caps) is not None:
        return None
    return Winner(problem, v.uri, case.splits, median_us=10.0, spread_us=0.1, kernel=kernel_digest(v.uri))


def _device_paths(caps) -> list[PathKind]:
    """The paths this device runs: scalar everywhere, the matrix ones where it has their extension."""
    out = []
    for path in PathKind:
        try:
            default_variant(_kernel_shapes(CASES[0]).problem(), caps, path)
        except InvalidVariant:
            continue
        out.append(path)
    return out


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """Per path of the device: the C engine built with the dispatcher exported from a DB of one
    tuned class per case (the cases' classes differ), that DB for kgen.plan, and the cases in it."""
    from kgen.planning.probe import open_for_kernels
    if shutil.which("cc") is None:
        pytest.fail("no cc on PATH: scripts/bootstrap.sh installs one")
    device = open_for_kernels()   # the fragment layout probed, as kgen.plan sees the device
    caps = device.caps
    ident, build = DeviceIdentity.of(caps), BuildIdentity.current()
    built = {}
    for path in _device_paths(caps):
        folder = tmp_path_factory.mktemp(f"engine-{path.value}")
        cases = [(c, w) for c in CASES if (w := _winner(c, caps, path)) is not None]
        assert len(cases) >= 3 and len({w.problem.key for _, w in cases}) == len(cases)
        if path is PathKind.COOPMAT1 and caps.coopmat1_fragments:   # the mask fragment pass runs too
            assert any(p.name.startswith("mask_frag") for _, w in cases for p in passes_before(Variant.parse(w.variant)))
        with TuningDB(folder / "tuning.sqlite") as db:
            for _, w in cases:
                db.set_winner(ident, build, w)
        ex.export([(ident, build, w) for _, w in cases], folder / "fa", "c")
        lib = folder / "libengine.so"
        cmd = ["cc", "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I", str(folder / "fa"),
               str(folder / "fa" / "kgen_fa.c"), str(HOST), "-o", str(lib), "-l:libvulkan.so.1", "-lm", "-lpthread"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        host = ctypes.CDLL(str(lib))
        host.kgen_host_open.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        host.kgen_host_run.argtypes = [ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_float),
                                       ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_uint64),
                                       ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_int,
                                       ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        host.kgen_host_time.argtypes = [ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_float),
                                        ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_uint64),
                                        ctypes.c_uint64, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                        ctypes.POINTER(ctypes.c_double), ctypes.c_char_p, ctypes.c_size_t]
        built[path] = (host, folder, [c for c, _ in cases])
    return device.index, "VK_KHR_push_descriptor" in caps.extensions, built


class Engine:
    def __init__(self, host, index: int, push_descriptor: bool):
        self.host = host
        message = ctypes.create_string_buffer(512)
        self.validation = os.environ.get("KGEN_VALIDATION") == "1"
        status = self.host.kgen_host_open(index, int(self.validation), int(push_descriptor), message, 512)
        assert status == 0, message.value.decode()

    def run(self, ints: list[int], floats: list[float], data: list, out_shape: tuple, runs: int = 2,
            drop: int = -1, keep_state: int = 0):
        arrays = [None if x is None else np.ascontiguousarray(x) for x in data]
        pointers = (ctypes.c_void_p * 5)(*[None if a is None else a.ctypes.data for a in arrays])
        sizes = (ctypes.c_uint64 * 5)(*[0 if a is None else a.nbytes for a in arrays])
        out = np.zeros(out_shape, np.float32)
        report = ctypes.create_string_buffer(512)
        status = self.host.kgen_host_run((ctypes.c_uint32 * len(ints))(*ints), (ctypes.c_float * 3)(*floats),
                                         pointers, sizes, out.ctypes.data, out.nbytes, runs, drop, keep_state,
                                         report, 512)
        return status, report.value.decode(), out

    def time(self, ints: list[int], floats: list[float], data: list, o_bytes: int, *, sets: int = 2,
             warmup: int = 3, repeats: int = 10, keep_state: bool = True) -> tuple[int, str, float, float]:
        """(status, report, median GPU us of a call, median CPU us of one kgen_fa_record)."""
        arrays = [None if x is None else np.ascontiguousarray(x) for x in data]
        pointers = (ctypes.c_void_p * 5)(*[None if a is None else a.ctypes.data for a in arrays])
        sizes = (ctypes.c_uint64 * 5)(*[0 if a is None else a.nbytes for a in arrays])
        times = (ctypes.c_double * 2)()
        report = ctypes.create_string_buffer(512)
        status = self.host.kgen_host_time((ctypes.c_uint32 * len(ints))(*ints), (ctypes.c_float * 3)(*floats),
                                          pointers, sizes, o_bytes, sets, warmup, repeats, int(keep_state), times,
                                          report, 512)
        return status, report.value.decode(), times[0], times[1]

    def close(self):
        errors = self.host.kgen_host_validation_errors()
        self.host.kgen_host_close()
        assert errors == 0, f"{errors} validation error(s) from the C engine (see stderr)"


def _cache(x: np.ndarray, t: str, pad_blocks: int, lead_blocks: int) -> tuple[bytes, tuple, int]:
    kt = KvType.parse(t)
    b, h, n, d = x.shape
    pad = pad_blocks * kt.block_size
    wide = np.concatenate([x, np.full((b, h, n, pad), 7.0)], axis=-1) if pad else x
    row = d + pad
    raw = b"\x11" * kt.block_bytes * lead_blocks + KVTensor.from_array(wide, kt).raw
    return raw, (row, row * n, row * n * h), kt.block_size * lead_blocks


def _call(case: Case, rng):
    """(ints, floats, buffers, reference output, q, K and V as KVTensors, mask, sinks) of a case."""
    b, hq, hkv, nq, nkv, dk, dv = case.shape
    kt = KvType.parse(case.kv_type)
    q = rng.standard_normal((b, hq, nq, dk))
    k = rng.standard_normal((b, hkv, nkv, dk))
    v = rng.standard_normal((b, hkv, nkv, dv))
    k_raw, k_strides, k_off = _cache(k, case.kv_type, case.pad_blocks, case.lead_blocks)
    kq = KVTensor(np.frombuffer(k_raw, np.uint8), kt, (b, hkv, nkv, dk), k_strides, k_off)
    if case.v_in_k:   # V is K's first dv columns: same bytes, K's strides
        v = k[..., :dv]
        v_raw, v_strides, v_off = None, k_strides, k_off
        vq = KVTensor(kq.data, kt, (b, hkv, nkv, dv), k_strides, k_off)
    else:
        v_raw, v_strides, v_off = _cache(v, case.kv_type, case.pad_blocks, case.lead_blocks)
        vq = KVTensor(np.frombuffer(v_raw, np.uint8), kt, (b, hkv, nkv, dv), v_strides, v_off)
    mask = mask_rows = None
    mb = mh = mr = 1
    row_stride = head_stride = batch_stride = 0
    if case.mask in ("rows", "heads"):
        mh = hq if case.mask == "heads" else 1
        mask = np.where(rng.random((b, mh, nq, nkv)) < 0.2, -np.inf, rng.standard_normal((b, mh, nq, nkv)))
        mask[..., :2 * nq // 3, 16:48] = -np.inf   # whole hidden blocks, as a padded batch has
        mask[..., -1] = 0.0   # every row sees a key
        row_stride = nkv + 8   # padded rows, as ggml pads them
        padded_rows = nq + 5 if case.mask == "heads" else nq   # and padded planes (ggml pads Nq too)
        mask_rows = np.full((b, mh, padded_rows, row_stride), -np.inf)
        mask_rows[..., :nq, :nkv] = mask
        mb, mr = b, nq
        if case.mask == "heads":
            head_stride, batch_stride = padded_rows * row_stride, mh * padded_rows * row_stride
    elif case.mask == "one":
        mask = rng.standard_normal((1, 1, 1, nkv))
        mask_rows = mask
    sinks = rng.standard_normal(hq) if case.sinks else None
    features = sum(FEATURE_BIT[f] for f, on in (("mask", mask is not None), ("causal", case.causal or case.window),
                                               ("alibi", case.alibi > 0), ("softcap", case.softcap > 0),
                                               ("sinks", case.sinks)) if on)
    q_strides = (hq * dk, dk, nq * hq * dk) if case.ggml_layout else dense_strides(nq, hq, dk)
    o_strides = (hq * dv, dv, nq * hq * dv) if case.ggml_layout else dense_strides(nq, hq, dv)
    ints = [dk, dv, KV_INDEX[case.kv_type], KV_INDEX[case.kv_type], features, 32, int(case.v_in_k), b, hq, hkv, nq, nkv,
            *k_strides, k_off, *v_strides, v_off, mb, mh, mr, row_stride, case.window,
            *(q_strides if case.ggml_layout else (0, 0, 0)), *(o_strides if case.ggml_layout else (0, 0, 0)),
            head_stride, batch_stride, int(case.mask_f32)]
    floats = [0.0, case.softcap, case.alibi]
    q_dev = strided_copy(q, q_strides)
    data = [q_dev, np.frombuffer(k_raw, np.uint8), None if v_raw is None else np.frombuffer(v_raw, np.uint8),
            None if mask_rows is None else mask_rows.astype(np.float32 if case.mask_f32 else np.float16),
            None if sinks is None else sinks.astype(np.float32)]
    kd = quant.roundtrip(k, kt)
    vd = kd[..., :dv] if case.v_in_k else quant.roundtrip(v, kt)
    ref = reference.attention(q, kd, vd, mask=None if mask is None else mask.astype(np.float16).astype(np.float64),
                              causal=case.causal, window=case.window or None, softcap=case.softcap,
                              alibi_max_bias=case.alibi, sinks=sinks)
    return ints, floats, data, ref, q, kq, vq, mask, sinks, o_strides


# Descriptor pools with the counters in scratch, zeroed by each record; push descriptors with a
# state buffer zeroed once. Each call runs twice, scratch NaN-filled before the second: a kernel
# that left the state nonzero shows in the second run's output.
@pytest.mark.parametrize("push_descriptor, keep_state", [(False, 0), (True, 1)], ids=["pools-fill", "push-state"])
def test_the_c_engine_runs_every_case_as_kgen_plan_would(engine, push_descriptor, keep_state, monkeypatch):
    index, has_push, built = engine
    if push_descriptor and not has_push:
        pytest.fail("the device has no VK_KHR_push_descriptor: the push-descriptor path is untested here")
    rng = np.random.default_rng(5)
    for path, (host, folder, cases) in built.items():
        monkeypatch.setenv("KGEN_DB", str(folder / "tuning.sqlite"))
        eng = Engine(host, index, push_descriptor)
        try:
            for case in cases:
                ints, floats, data, ref, q, kq, vq, mask, sinks, o_strides = _call(case, rng)
                b, hq, _, nq, _, _, dv = case.shape
                status, report, raw = eng.run(ints, floats, data, (strided_extent(o_strides, b, hq, nq, dv),),
                                              keep_state=keep_state)
                out = np.lib.stride_tricks.as_strided(raw, ref.shape, [4 * s for s in o_strides[::-1]] + [4])
                label = f"{path.value} {case.name}"
                assert status == 0, f"{label}: {report}"
                variant, problem, splits, scratch, exact, state = report.split("|")
                assert np.isfinite(out).all(), label
                err = reference.nmse(out, ref)
                assert err <= 5e-4, f"{label}: NMSE {err:.3g} ({variant})"
                with kgen.plan(q, kq, vq, mask=mask, causal=case.causal, window=case.window or None,
                               softcap=case.softcap, alibi_max_bias=case.alibi, sinks=sinks,
                               q_strides=tuple(ints[25:28]) if case.ggml_layout else None,
                               o_strides=o_strides) as p:
                    assert (variant, int(splits)) == (p.variant.uri, p.splits), label
                    assert exact == "1" and p.how.startswith("tuned, exact"), label
                    assert int(scratch) >= sum(p.recipe.sizes(p.dims()).values()), label
                    assert (int(state) > 0) == p.variant.fused_reduce, label
        finally:
            eng.close()


def test_the_c_dispatcher_refuses_bad_calls_by_name_and_reports_what_it_does_not_cover(engine):
    index, _, built = engine
    host, _, cases = built[PathKind.SCALAR]
    rng = np.random.default_rng(1)
    eng = Engine(host, index, False)
    try:
        ints, floats, data, ref, *_ = _call(CASES[0], rng)

        def run(dense=False, **change):
            call = list(ints)
            if dense:   # default K/V strides and offsets
                call[12:20] = [0] * 8
            names = ["head_k", "head_v", "k_type", "v_type", "features", "acc", "v_in_k", "n_batch", "n_head_q",
                     "n_head_kv", "n_q", "n_kv"]
            for name, value in change.items():
                call[names.index(name)] = value
            return eng.run(call, floats, data, ref.shape, runs=1)[:2]

        assert run(head_k=65) == (INVALID, "KGEN_FA_ERROR_INVALID_ARGUMENT: head_k=65, head_v=64: head sizes are "
                                           "multiples of 8 from 32 to 576")
        status, why = run(n_head_q=5)
        assert status == INVALID and "n_head_q=5 must be a multiple of n_head_kv=2" in why
        status, why = run(n_q=0)
        assert status == INVALID and "n_q=0" in why and "at least 1" in why
        status, why = run(k_type=99)
        assert status == INVALID and "k_type=99" in why
        status, why = run(acc=8)
        assert status == INVALID and "acc=8" in why
        status, why = run(features=ints[4] | FEATURE_BIT["alibi"])
        assert status == INVALID and "max_bias=0" in why
        alibi = list(ints)
        alibi[4] |= FEATURE_BIT["alibi"]
        status, why = eng.run(alibi, [*floats[:2], 127.0, *floats[3:]], data, ref.shape, runs=1)[:2]
        assert status == INVALID and "max_bias=127: at most 126" in why
        status, why = run(dense=True, features=0, n_kv=1 << 26)   # 2 x 2^26 rows of 64 elements: past 2^32
        assert status == INVALID and "K: its last element is at" in why and "32-bit" in why
        status, why = run(dense=True, head_k=128, head_v=128)   # valid, but no tuned class
        assert status == NOT_COVERED and "no tuned kernel for head 128/128" in why
        status, why = run(head_k=128, head_v=128)
        assert status == INVALID and "k_stride[0]=64" in why and "head_k=128" in why
        # Buffers the plan needs, missing: refused before anything is recorded.
        status, why, _ = eng.run(ints, floats, data, ref.shape, runs=1, drop=5)
        assert status == INVALID and "buffers.o: VK_NULL_HANDLE" in why
        split = _call(CASES[1], rng)
        status, why, _ = eng.run(*split[:3], split[3].shape, runs=1, drop=6)
        assert status == INVALID and "buffers.scratch: VK_NULL_HANDLE" in why
        fused = next((c for c in cases if c.fused), None)
        assert fused is not None, "the scalar path runs the fused reduce"
        call = _call(fused, rng)
        status, why, _ = eng.run(*call[:3], call[3].shape, runs=1, keep_state=2)
        assert status == INVALID and "buffers.state.range=" in why and "the plan needs" in why
        # Each caller buffer's range one word short of what the plan says the call reads or writes:
        # refused by name (the other cases pass each range at their data's size, so the plan's
        # figures are not overstated).
        features = _call(next(c for c in cases if c.sinks), rng)
        for i, name in enumerate(("q", "k", "v", "mask", "sinks", "o")):
            status, why, _ = eng.run(*features[:3], features[3].shape, runs=1, drop=100 + i)
            assert status == INVALID and f"buffers.{name}.range=" in why and "the plan needs" in why, (name, why)
        # Mask planes that would overlap: a head or batch stride below a plane's extent.
        f_ints = features[0]
        b, _, _, nq, nkv, *_ = next(c for c in cases if c.sinks).shape
        plane = (nq - 1) * f_ints[23] + nkv
        for at, name, value in ((31, "mask_head_stride", plane - 1), (32, "mask_batch_stride", 1)):
            bad = list(f_ints)
            bad[at] = value
            bad[20] = 2 if name == "mask_batch_stride" else bad[20]   # a batch stride matters with 2 batches
            bad[7] = max(bad[7], bad[20])
            status, why, _ = eng.run(bad, *features[1:3], features[3].shape, runs=1)
            assert status == INVALID and f"{name}={value}: at least" in why, (name, why)
        bad = list(f_ints)
        bad[33] = 7
        status, why, _ = eng.run(bad, *features[1:3], features[3].shape, runs=1)
        assert status == INVALID and "mask_type=7: KGEN_FA_MASK_F16 (0) or KGEN_FA_MASK_F32 (1)" in why, why
    finally:
        eng.close()


def test_threads_planning_at_once_share_one_context(engine):
    """The first plans of an entry, from 8 threads on a fresh context: every one succeeds with
    the same pipelines (created once, under the context's lock), and the call then runs right."""
    index, _, built = engine
    host, _, cases = built[PathKind.SCALAR]
    host.kgen_host_plan_threads.argtypes = [ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_float), ctypes.c_int]
    eng = Engine(host, index, False)
    try:
        ints, floats, data, ref, *_ = _call(cases[0], np.random.default_rng(2))
        assert host.kgen_host_plan_threads((ctypes.c_uint32 * len(ints))(*ints), (ctypes.c_float * 3)(*floats), 8) == 8
        status, report, out = eng.run(ints, floats, data, ref.shape)
        assert status == 0 and reference.nmse(out, ref) <= 5e-4, report
    finally:
        eng.close()


@pytest.mark.parametrize("push_descriptor", [False, True], ids=["pools", "push"])
def test_the_c_engine_times_a_call_with_gpu_timestamps(engine, push_descriptor):
    """The timing path (device-local buffers, rotated sets, timestamps around each record) runs
    clean and reports a GPU time and a record cost; the figures themselves go to benchmarks."""
    index, has_push, built = engine
    if push_descriptor and not has_push:
        pytest.fail("the device has no VK_KHR_push_descriptor")
    host, _, cases = built[PathKind.SCALAR]
    eng = Engine(host, index, push_descriptor)
    try:
        case = next(c for c in cases if c.splits > 1)
        ints, floats, data, ref, *_ = _call(case, np.random.default_rng(4))
        status, report, gpu_us, record_us = eng.time(ints, floats, data, ref.size * 4)
        assert status == 0, report
        assert gpu_us > 0 and record_us > 0, (gpu_us, record_us)
    finally:
        eng.close()
