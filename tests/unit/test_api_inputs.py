"""Inputs that are not arrays: lists of numbers become arrays, anything else is a ValueError that
names the argument and what is accepted, before any device work (no device needed here)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import kgen
from kgen.kvtensor import layout_of
from kgen.planning import plan as plan_module
from kgen.planning import probe
from kgen.shapes import as_inputs, dense_strides, shapes_of

RNG = np.random.default_rng(0)
Q = RNG.standard_normal((1, 2, 3, 64)).astype(np.float32)
K = RNG.standard_normal((1, 1, 5, 64)).astype(np.float32)
V = RNG.standard_normal((1, 1, 5, 64)).astype(np.float32)


@pytest.fixture(autouse=True)
def no_device(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a device was opened")
    monkeypatch.setattr(probe, "open_for_kernels", refuse)


@pytest.mark.parametrize("bad", ["q", None, object(), b"xx", 3, [[1.0, 2.0], [3.0]], [["a", "b"]]])
@pytest.mark.parametrize("arg", ["q", "k", "v"])
@pytest.mark.parametrize("call", ["attention", "plan"])
def test_non_array_qkv_is_a_value_error_naming_it(call, arg, bad):
    args = {"q": Q, "k": K, "v": V, arg: bad}
    with pytest.raises(ValueError, match=rf"^{arg}\b.*(expected|not a|shape)") as info:
        getattr(kgen, call)(args["q"], args["k"], args["v"])
    if bad is not None and not isinstance(bad, int):
        assert "array" in str(info.value)


@pytest.mark.parametrize("name,bad", [("mask", "causal"), ("mask", object()), ("sinks", "x"),
                                      ("sinks", object()), ("mask", [[0.0, "a"]])])
def test_non_array_mask_and_sinks_are_value_errors_naming_them(name, bad):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        kgen.attention(Q, K, V, **{name: bad})


def test_kvtensor_is_for_k_and_v_only():
    kv = kgen.KVTensor.from_array(K, "f16")
    with pytest.raises(ValueError, match=r"^q: a KVTensor is accepted for k and v only"):
        kgen.attention(kv, K, V)


def test_nested_lists_give_the_shapes_arrays_give():
    mask = np.zeros((3, 5), np.float32)
    sinks = np.zeros(2, np.float32)
    want = shapes_of(Q, K, V, mask=mask, sinks=sinks)
    assert shapes_of(Q.tolist(), K.tolist(), V.tolist(), mask=mask.tolist(), sinks=sinks.tolist()) == want
    assert shapes_of(tuple(Q.tolist()), K, V, mask=mask.astype(bool).tolist(), sinks=sinks) == want


def test_shape_only_objects_still_plan():
    class Spec:
        def __init__(self, shape):
            self.shape = shape
    assert shapes_of(Spec(Q.shape), Spec(K.shape), Spec(V.shape)) == shapes_of(Q, K, V)
    with pytest.raises(ValueError, match=r"^q: its \.shape"):
        shapes_of(Spec("abc"), K, V)
    q, *_ = as_inputs(Spec(Q.shape), K, V)          # plan() takes it as is
    with pytest.raises(ValueError, match=r"^q\b"):
        as_inputs(Spec(Q.shape), K, V, data=True)   # but a call needs its data


def test_plan_takes_lists(monkeypatch):
    seen = {}

    class FakePlan:
        def __init__(self, shapes, **kw):
            seen.update(shapes=shapes, **kw)
    monkeypatch.setattr(plan_module, "Plan", FakePlan)
    kgen.plan(Q.tolist(), K.tolist(), V.tolist())
    assert seen["shapes"] == shapes_of(Q, K, V)
    assert seen["kv_layouts"]["k"] == layout_of(K, seen["shapes"].k_type, K.shape)


class _Buffer:
    def __init__(self):
        self.data = None

    def write(self, data):
        self.data = bytes(np.ascontiguousarray(data)) if not isinstance(data, bytes) else data


def _fake_plan(mask=None, sinks=None) -> plan_module.Plan:
    """A Plan's upload() state without a device: shapes, layouts and buffers that record writes."""
    p = plan_module.Plan.__new__(plan_module.Plan)
    p.shapes = shapes_of(Q, K, V, mask=mask, sinks=sinks)
    p.kv_layouts = {"k": layout_of(None, p.shapes.k_type, K.shape), "v": layout_of(None, p.shapes.v_type, V.shape)}
    p.v_in_k = False
    p.q_strides = dense_strides(p.shapes.n_q, p.shapes.heads_q, p.shapes.head_k)
    p._buffers = {name: _Buffer() for name in ("q", "k", "v", "mask", "sinks")}
    return p


def test_plan_call_uploads_lists_as_it_does_arrays():
    mask, sinks = np.zeros((3, 5), np.float32), np.ones(2, np.float32)
    a, b = _fake_plan(mask, sinks), _fake_plan(mask, sinks)
    a.upload(Q, K, V, mask=mask, sinks=sinks)
    b.upload(Q.tolist(), K.tolist(), V.tolist(), mask=mask.tolist(), sinks=sinks.tolist())
    assert all(a._buffers[n].data == b._buffers[n].data is not None for n in a._buffers)


@pytest.mark.parametrize("arg", ["q", "k", "v"])
def test_plan_call_refuses_non_arrays(arg):
    p = _fake_plan()
    args = {"q": Q, "k": K, "v": V, arg: "nope"}
    with pytest.raises(ValueError, match=rf"^{arg}\b.*expected"):
        p.upload(args["q"], args["k"], args["v"])
    assert all(b.data is None for b in p._buffers.values())   # nothing went up


def test_reference_and_quant_after_import_kgen_alone():
    assert {"reference", "quant"} <= set(kgen.__all__)
    code = "import kgen; kgen.reference.attention; kgen.reference.nmse; kgen.quant.roundtrip"
    subprocess.run([sys.executable, "-c", code], check=True)
