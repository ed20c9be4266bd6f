"""Inputs that a storage type, a push constant or a device limit cannot hold are refused by name,
with the value and the limit, before any device work; nothing is coerced or half-written. No
device needed: plans run against a fake device with a reference device's caps."""
from __future__ import annotations

import re

import numpy as np
import pytest

import kgen
from kgen import profiles, quant
from kgen.kvtensor import KVTensor, layout_of
from kgen.planning import plan as plan_module
from kgen.planning import probe
from kgen.shapes import dense_strides, shapes_of
from kgen.space import default_variant

RNG = np.random.default_rng(0)
Q = RNG.standard_normal((1, 2, 3, 64)).astype(np.float32)
K = RNG.standard_normal((1, 1, 5, 64)).astype(np.float32)
V = RNG.standard_normal((1, 1, 5, 64)).astype(np.float32)
BLOCK_TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]


@pytest.fixture(autouse=True)
def no_device(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a device was opened")
    monkeypatch.setattr(probe, "open_for_kernels", refuse)


class _Buffer:
    def __init__(self):
        self.data = None

    def write(self, data):
        self.data = data if isinstance(data, bytes) else bytes(np.ascontiguousarray(data))


def _fake_plan(k=K, v=V, **features) -> plan_module.Plan:
    """A Plan's upload() state without a device: shapes, layouts and buffers that record writes."""
    p = plan_module.Plan.__new__(plan_module.Plan)
    p.shapes = shapes_of(Q, k, v, **features)
    p.kv_layouts = {name: layout_of(x, getattr(p.shapes, f"{name}_type"), tuple(x.shape))
                    for name, x in (("k", k), ("v", v))}
    p.v_in_k = False
    p.q_strides = dense_strides(p.shapes.n_q, p.shapes.heads_q, p.shapes.head_k)
    p._buffers = {name: _Buffer() for name in ("q", "k", "v", "mask", "sinks")}
    return p


def _refused(p, match, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        p.upload(*args, **kwargs)
    assert all(b.data is None for b in p._buffers.values()), "a buffer was written"


# --- 2: finite values the storage type cannot hold ------------------------------------------------
@pytest.mark.parametrize("t", BLOCK_TYPES)
def test_quantize_refuses_a_block_scale_beyond_f16(t):
    x = K.copy()
    x[0, 0, 2, 40] = 2e7   # the second block of row 2: its scale overflows f16 in every block type
    with pytest.raises(ValueError, match=rf"^k\[0, 0, 2, 32:64\] holds values up to 20000000 in magnitude: its {t} block.*.*f16's 65504"):
        quant.quantize(x, t, name="k")
    quant.quantize(x / 1e3, t)   # in range: fine


def test_quantize_refuses_float_overflow_and_keeps_ggml_nan_behaviour():
    with pytest.raises(ValueError, match=r"^v\[0, 1\]=70000 is beyond f16's range \(at most 65504"):
        quant.quantize(np.array([[1.0, 7e4]]), "f16", name="v")
    with pytest.raises(ValueError, match=r"beyond bf16's range"):
        quant.quantize(np.array([[3.3999e38]], np.float32), "bf16")
    with pytest.raises(ValueError, match=r"^x\[0, 0\]=1e\+39 is beyond f32's range"):
        quant.quantize(np.array([[1e39]]), "q8_0")
    assert quant.quantize(np.array([[65519.0]]), "f16").view("<f2")[0, 0] == 65504   # rounds, fits
    quant.quantize(np.full((1, 32), np.nan), "q8_0")   # non-finite input: ggml's codes, no error


@pytest.mark.parametrize("name,k_type", [("k", "f16"), ("v", "f16"), ("k", "q8_0"), ("v", "q4_1")])
def test_kv_beyond_its_storage_type_is_refused_naming_it(name, k_type):
    big = {"k": K, "v": V}
    big[name] = big[name] * (7e4 if k_type == "f16" else 3e7)
    p = _fake_plan(**{f"{name[0]}_type": k_type})
    _refused(p, rf"^{name}\[", Q, big["k"], big["v"])
    _fake_plan(k_type="f32", v_type="f32").upload(Q, K * 7e4, V * 7e4)   # f32 storage holds it


def test_f64_q_and_sinks_beyond_f32_are_refused():
    q = Q.astype(np.float64)
    q[0, 1, 2, 3] = 1e39
    _refused(_fake_plan(), r"^q\[0, 1, 2, 3\]=1e\+39 is beyond f32's range \(at most 3.40282347e\+38", q, K, V)
    sinks = np.zeros(2)
    _refused(_fake_plan(sinks=sinks), r"^sinks\[1\]=-1e\+39 is beyond f32's range", Q, K, V,
             sinks=np.array([0.0, -1e39]))
    _refused(_fake_plan(), r"^q has NaN or Inf values \(q\[0, 0, 0, 0\]=nan\)", np.full_like(Q, np.nan), K, V)


def test_mask_beyond_f16_saturates_below_and_is_refused_above():
    mask = np.zeros((3, 5))
    p = _fake_plan(mask=mask)
    mask[1, 2] = 1e5
    _refused(p, r"^mask\[1, 2\]=100000 is beyond f16's range \(at most 65504", Q, K, V, mask=mask)
    hidden = np.array([[-1e30, -np.inf, -3.4e38, -65504.0, 0.5]] * 3)
    p.upload(Q, K, V, mask=hidden)
    stored = np.frombuffer(p._buffers["mask"].data, "<f2")[:5]
    assert stored.tolist() == [-65504.0, -np.inf, -65504.0, -65504.0, 0.5]


def test_call_time_mask_and_sinks_must_fit_the_plan():
    p = _fake_plan(mask=np.zeros((3, 5)))
    _refused(p, r"^mask shape \(2, 5\) does not broadcast to \(B, Hq, Nq, Nkv\)=\(1, 2, 3, 5\)", Q, K, V,
             mask=np.zeros((2, 5)))
    p.upload(Q, K, V, mask=np.zeros((1, 5)))   # broadcasts over the plan's rows: fine
    p = _fake_plan(sinks=np.zeros(2))
    _refused(p, r"^sinks has shape \(3,\); this plan was made for \(2,\)", Q, K, V, sinks=np.zeros(3))


# --- 7: KVTensor fields -------------------------------------------------------------------------
RAW = bytes(4096)


@pytest.mark.parametrize("kwargs,match", [
    (dict(offset=-32), r"^KVTensor.offset=-32: must be 0\.\.4294967295"),
    (dict(strides=(64, 2**32, 2**32)), r"^KVTensor.strides=\(64, 4294967296, 4294967296\): must be 0\.\.4294967295"),
    (dict(data="x" * 4096), r"^KVTensor.data: a str; expected bytes"),
    (dict(data=[0] * 4096), r"^KVTensor.data: a list; expected bytes"),
    (dict(data=np.array([object()] * 10)), r"^KVTensor.data: a object array"),
    (dict(shape=(1, 1, 5.5, 64)), r"^KVTensor.shape=\(1, 1, 5.5, 64\): must be \(B, H, N, D\), 4 integer"),
    (dict(strides=(64, 320)), r"^KVTensor.strides=\(64, 320\): must be \(row, head, batch\), 3 integer"),
    (dict(offset="a"), r"^KVTensor.offset='a': must be an integer"),
    (dict(offset=32.0), r"^KVTensor.offset=32.0: must be an integer"),
    (dict(type="f17"), r"^KVTensor.type: unknown KV type 'f17'"),
])
def test_kvtensor_fields_are_checked_by_name(kwargs, match):
    fields = dict(data=RAW, type="f16", shape=(1, 1, 5, 64), strides=(64, 320, 320)) | kwargs
    with pytest.raises(ValueError, match=match):
        KVTensor(**fields)
    KVTensor(bytearray(RAW), "f16", (1, 1, 5, 64), (64, 320, 320))   # bytes-like data is fine


@pytest.mark.parametrize("t,what", [("q8_0", "scale d"), ("q4_1", "minimum m"), ("f16", "value"), ("bf16", "value")])
def test_kvtensor_with_nan_or_inf_bytes_is_refused_at_upload(t, what):
    good = KVTensor.from_array(K, t)
    raw = np.frombuffer(good.raw, np.uint8).copy().reshape(5, -1)
    field = quant.blocks(raw, t)[what[-1]] if t in BLOCK_TYPES else raw.view("<f2" if t == "f16" else "<u2")
    field[3, 1] = np.inf if t != "bf16" else 0x7FC0   # row 3: its second block / element
    bad = KVTensor(raw.tobytes(), t, good.shape, good.strides)
    at = re.escape("block 1 (elements 32..63)") if t in BLOCK_TYPES else "element 1"
    _refused(_fake_plan(k=bad), rf"^k: KVTensor.data holds a NaN or Inf {what} at batch 0, head 0, row 3, {at}:",
             Q, bad, V)


def test_kvtensor_bytes_outside_its_rows_are_not_checked():
    row = 96   # each row padded from 64 to 96 elements, the padding NaN
    raw = np.full((5, row), np.nan, np.float16)
    raw[:, :64] = K[0, 0]
    kt = KVTensor(raw.tobytes(), "f16", (1, 1, 5, 64), (row, 5 * row, 5 * row))
    p = _fake_plan(k=kt)
    p.upload(Q, kt, V)
    assert p._buffers["k"].data == raw.tobytes()


# --- 11, 12, 13: scalar arguments of the wrong type or beyond a push constant ----------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(scale="0.1"), r"^scale='0.1': expected a real number"),
    (dict(scale=1j), r"^scale=1j: expected a real number"),
    (dict(scale=np.nan), r"^scale=nan: must be finite"),
    (dict(scale=3.5e38), r"^scale=3.5e\+38: must be finite, at most 3.40282347e\+38"),
    (dict(causal=True, window="4"), r"^window='4': expected an integer"),
    (dict(causal=True, window=float("nan")), r"^window=nan: expected an integer"),
    (dict(causal=True, window=2.7), r"^window=2.7: expected an integer"),
    (dict(causal=True, window=2**32), r"^window=4294967296: must be 1\.\.4294967295"),
    (dict(softcap=None), r"^softcap=None: expected a real number"),
    (dict(softcap="30"), r"^softcap='30': expected a real number"),
    (dict(softcap=3.5e38), r"^softcap=3.5e\+38: must be 0 \(off\) or from 1.17549435e-38 to 3.40282347e\+38"),
    (dict(softcap=1e-40), r"^softcap=1e-40: must be 0 \(off\) or from"),
    (dict(alibi_max_bias="8", mask=np.zeros((3, 5))), r"^alibi_max_bias='8': expected a real number"),
    (dict(alibi_max_bias=127.0, mask=np.zeros((3, 5))), r"^alibi_max_bias=127.0: must be from 0 to 126 "),
    (dict(causal="no"), r"^causal='no': expected True or False"),
    (dict(autotune="no"), r"^autotune='no': expected True or False or None"),
    (dict(device="llvmpipe"), r"^device='llvmpipe': a device index >= 0"),
    (dict(device=-1), r"^device=-1: a device index >= 0"),
    (dict(device=True), r"^device=True: a device index"),
    (dict(precision=["f32"]), r"^precision=\['f32'\]: one of f32, f16"),
    (dict(k_type=3), r"^k_type=3: a KV type name"),
    (dict(v_type="q3_k"), r"^v_type='q3_k': unknown KV type"),
])
@pytest.mark.parametrize("call", ["attention", "plan"])
def test_scalar_arguments_are_refused_by_name(call, kwargs, match):
    with pytest.raises(ValueError, match=match):
        getattr(kgen, call)(Q, K, V, **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(split_k="2"), r"^split_k='2': expected an integer"),
    (dict(split_k=2.5), r"^split_k=2.5: expected an integer"),
    (dict(variant=3), r"^variant=3: a kgen Variant, its uri string, or None"),
    (dict(variant="fa_nonsense"), r"^variant='fa_nonsense': not a kgen variant uri"),
    (dict(q_strides=(64.0, 192, 384)), r"^q_strides=\(64.0, 192, 384\): \(row, head, batch\) strides in elements, 3 integers"),
    (dict(o_strides=(64, 2**32, 2**33)), r"^o_strides=.*non-negative multiples of 4 elements \(16 bytes\), at most 4294967295 \(uint32"),
])
def test_plan_arguments_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kgen.plan(Q, K, V, **kwargs)


def test_variant_uri_string_is_parsed():
    v = default_variant(shapes_of(Q, K, V).problem(), profiles.LAVAPIPE)
    assert plan_module._as_variant(v.uri) == v
    assert plan_module._as_variant(v) is v


def test_explicit_kv_type_must_match_a_kvtensor():
    kt = KVTensor.from_array(K, "q8_0")
    with pytest.raises(ValueError, match=r"^k_type=f16: k is a q8_0 KVTensor.*k_type=None or k_type='q8_0'"):
        kgen.attention(Q, kt, V, k_type="f16")
    assert shapes_of(Q, kt, V, k_type="q8_0").k_type.label == "q8_0"


def test_shape_dims_are_ints():
    s = shapes_of(_Shape(1, 2, 3.0, 64), K, V)
    assert s == shapes_of(Q, K, V) and type(s.n_q) is int


def test_complex_arrays_are_refused_not_truncated():
    with pytest.raises(ValueError, match=r"^q: holds complex64 values; kgen takes real numbers"):
        kgen.attention(Q.astype(np.complex64), K, V)
    with pytest.raises(ValueError, match=r"^x holds complex128 values"):
        quant.quantize(K.astype(complex), "q8_0")


def test_out_must_be_a_writeable_float32_array():
    out = np.zeros((1, 2, 3, 64), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="^out: a read-only array"):
        plan_module._check_out(out, out.shape)
    with pytest.raises(ValueError, match=r"^out: a float32 array of shape \(1, 2, 3, 64\) \(a numpy array\), got <class 'list'>"):
        plan_module._check_out(out.tolist(), out.shape)


# --- 14: device limits, checked before any allocation or compile ---------------------------------
class _Shape:
    def __init__(self, *shape):
        self.shape = shape


class _FakeDevice:
    def __init__(self, caps):
        self.caps = caps

    def buffer(self, nbytes):
        raise AssertionError("a buffer was allocated")

    def pipeline(self, *a, **k):
        raise AssertionError("a pipeline was compiled")


@pytest.mark.parametrize("shapes,kwargs,match", [
    (((1, 1, 1, 64), (1, 1, 600000, 64), (1, 1, 600000, 64)), dict(k_type="f32"),
     r"^k: 153600000 bytes \(f32 \(B, Hkv, Nkv, Dk\)=\(1, 1, 600000, 64\)\) exceed this device's maxStorageBufferRange of 134217728"),
    (((1, 1, 600000, 64), (1, 1, 8, 64), (1, 1, 8, 64)), {},
     r"^q: 153600000 bytes \(f32 \(B, Hq, Nq, Dk\)=\(1, 1, 600000, 64\).*maxStorageBufferRange of 134217728"),
    (((1, 1, 2000, 64), (1, 1, 40000, 64), (1, 1, 40000, 64)), dict(mask=_Shape(2000, 40000)),
     r"^mask: 160000000 bytes \(f16, stored as \(1, 1, 2000, 40000\)\).*maxStorageBufferRange"),
    (((1, 70000, 1, 64), (1, 70000, 8, 64), (1, 70000, 8, 64)), {},
     r"^heads=70000: the fa_\w+ step needs 70000 workgroups along grid y, this device allows 65535 \(maxComputeWorkGroupCount\[1\]"),
    (((70000, 1, 1, 64), (70000, 1, 8, 64), (70000, 1, 8, 64)), {},
     r"^batch=70000, KV splits=1: the fa_\w+ step needs 70000 workgroups along grid z"),
    (((1, 1, 70000, 64), (1, 1, 8, 64), (1, 1, 8, 64)), {},
     r"^n_q=70000: the fa_\w+ step needs 70000 workgroups along grid x"),
])
def test_device_limits_name_the_tensor_or_dimension(monkeypatch, shapes, kwargs, match):
    monkeypatch.setattr(probe, "open_for_kernels", lambda device=None: _FakeDevice(profiles.LAVAPIPE))
    with pytest.raises(ValueError, match=match):
        kgen.plan(*(_Shape(*s) for s in shapes), **kwargs)


def test_gqa_folded_grid_says_so(monkeypatch):
    monkeypatch.setattr(probe, "open_for_kernels", lambda device=None: _FakeDevice(profiles.LAVAPIPE))
    with pytest.raises(ValueError, match=r"^n_q=80000: .* grid x.*GQA folded"):
        kgen.plan(_Shape(1, 8, 10000, 64), _Shape(1, 1, 8, 64), _Shape(1, 1, 8, 64))


def test_scratch_beyond_the_device_is_out_of_resources(monkeypatch):
    from kgen.errors import OutOfResources
    monkeypatch.setattr(probe, "open_for_kernels", lambda device=None: _FakeDevice(profiles.LAVAPIPE))
    with pytest.raises(OutOfResources, match=r"needs \d+ of bytes in scratch buffer 'out' \(maxStorageBufferRange\), "
                                             r"the device allows 134217728"):
        kgen.plan(_Shape(1, 1, 10000, 64), _Shape(1, 1, 100000, 64), _Shape(1, 1, 100000, 64), split_k=60)
