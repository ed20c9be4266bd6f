"""Q and O in an engine's layout on the device (kgen.plan's q_strides / o_strides, the kernels'
o strides): every path the device has, with and without GQA folding, split-k with the reduce
pass and fused, matches the float64 reference (NMSE <= 5e-4); `out=` receives the result; bad
strides and a bad `out` are refused by name before any device work."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import kgen
from kgen import reference
from kgen.errors import InvalidVariant
from kgen.shapes import dense_strides, fold_for_layouts, folded_strides, shapes_of
from kgen.space import default_variant
from kgen.variant import PathKind


def ggml_strides(b: int, hq: int, nq: int, d: int) -> tuple[int, int, int]:
    """ggml's FA tensors, (B, Nq, Hq, D): a query row holds every head."""
    return hq * d, d, nq * hq * d


def _paths(q, k, v) -> list[PathKind]:
    from kgen.runtime import open_device
    caps = open_device().caps
    out = []
    for path in PathKind:
        try:
            default_variant(shapes_of(q, k, v).problem(), caps, path)
        except InvalidVariant:
            continue
        out.append(path)
    return out


CASES = [  # (name, B, Hq, Hkv, Nq, Nkv, D, features, split_k, fused)
    ("prefill-gqa", 2, 4, 2, 19, 150, 64, {}, None, False),
    ("decode-gqa-folded", 1, 8, 2, 1, 300, 64, {"causal": True}, None, False),
    ("decode-split-reduce", 1, 8, 2, 1, 700, 64, {"causal": True}, 4, False),
    ("prefill-split-fused", 1, 4, 4, 9, 700, 64, {"mask": True}, 3, True),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_q_and_o_in_ggml_layout_match_the_reference(case):
    name, b, hq, hkv, nq, nkv, d, features, split_k, fused = case
    rng = np.random.default_rng(len(name))
    q = rng.standard_normal((b, hq, nq, d)).astype(np.float32)
    k = rng.standard_normal((b, hkv, nkv, d)).astype(np.float16).astype(np.float32)
    v = rng.standard_normal((b, hkv, nkv, d)).astype(np.float16).astype(np.float32)
    mask = rng.standard_normal((1, 1, nq, nkv)).astype(np.float16).astype(np.float32) if features.get("mask") else None
    causal = features.get("causal", False)
    ref = reference.attention(q.astype(np.float64), k, v, mask=mask, causal=causal)
    qs, os_ = ggml_strides(b, hq, nq, d), ggml_strides(b, hq, nq, d)
    for path in _paths(q, k, v):
        variant = None
        if fused:
            if path is PathKind.COOPMAT1:
                continue   # coopmat1 has no fused reduce
            from kgen.runtime import open_device
            problem = shapes_of(q, k, v, mask=mask, causal=causal).problem()
            split = dataclasses.replace(problem, features=problem.features + ("split_k",))
            base = default_variant(split, open_device().caps, path)
            variant = base.replace(split_k=True, fused_reduce=True, aligned=nkv % base.bc == 0)
        with kgen.plan(q, k, v, mask=mask, causal=causal, path=path if variant is None else None, split_k=split_k,
                       variant=variant, q_strides=qs, o_strides=os_) as p:
            if name == "decode-gqa-folded":
                assert p.kernel_shapes.heads_q == hkv and p.kernel_q_strides == (d, hq // hkv * d, qs[2])
            if name == "prefill-gqa":
                assert p.kernel_shapes is p.shapes   # ggml's rows interleave heads: not foldable
            out = np.full(ref.shape, np.nan, np.float32)
            got = p(q, k, v, mask=mask, out=out)
            assert got is out
            assert np.isfinite(out).all(), (path, name)
            raw = np.frombuffer(p._buffers["o"].read(p._buffers["o"].nbytes), np.float32)
            # The device buffer is in ggml's layout: row i of head h at i * Hq * D + h * D.
            assert np.array_equal(raw[:d], out[0, 0, 0]) and np.array_equal(raw[d:2 * d], out[0, 1, 0])
            err = reference.nmse(out, ref)
            assert err <= 5e-4, f"{path} {name}: NMSE {err:.3g} ({p.variant.uri})"


def test_fold_needs_a_layout_that_allows_it():
    assert folded_strides(dense_strides(5, 8, 64), 5, 4) == (64, 4 * 5 * 64, 8 * 5 * 64)
    assert folded_strides(ggml_strides(1, 8, 1, 64), 1, 4) == (64, 256, 512)
    assert folded_strides(ggml_strides(1, 8, 5, 64), 5, 4) is None
    q = np.zeros((1, 8, 5, 64)); kv = np.zeros((1, 2, 100, 64))
    s = shapes_of(q, kv, kv)
    assert fold_for_layouts(s, dense_strides(5, 8, 64), dense_strides(5, 8, 64))[0].heads_q == 2
    assert fold_for_layouts(s, ggml_strides(1, 8, 5, 64), dense_strides(5, 8, 64))[0] is s


def test_bad_strides_and_out_are_refused_by_name():
    q = np.zeros((1, 2, 4, 64), np.float32) + 0.5
    kv = np.ones((1, 2, 32, 64), np.float32)
    with pytest.raises(ValueError, match=r"q_strides=\(64, 6, 512\): non-negative multiples of 4"):
        kgen.plan(q, kv, kv, q_strides=(64, 6, 512))
    with pytest.raises(ValueError, match=r"o_strides=\(32, 256, 512\): rows of 64 elements overlap"):
        kgen.plan(q, kv, kv, o_strides=(32, 256, 512))
    with pytest.raises(ValueError, match=r"q_strides='x': \(row, head, batch\)"):
        kgen.plan(q, kv, kv, q_strides="x")
    with kgen.plan(q, kv, kv) as p:
        with pytest.raises(ValueError, match=r"out: a float32 array of shape \(1, 2, 4, 64\)"):
            p(q, kv, kv, out=np.zeros((1, 2, 4, 64), np.float64))
