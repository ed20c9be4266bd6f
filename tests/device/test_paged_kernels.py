"""The paged KV kernels (scalar path) against the float64 paged reference on the device.

Caches are shuffled pages, some shared between sequences (prefix sharing), last pages partly
filled, query rows ragged (decode, speculative widths, chunked prefill), every KV type, K and V
types apart. A hostile block table, sequence lengths and query starts written straight into the
plan's buffers (past the host's checks) must give what the kernels' documented clamps give.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import kgen
from kgen import reference
from kgen.paged import PagedKV
from kgen.reference import nmse
from kgen.types import KvType

from helpers import make_paged_problem

TYPES = [t.label for t in KvType]
HEADS = [(32, 32), (64, 64), (40, 40), (64, 32)]


def check(out, ref, what=""):
    assert np.isfinite(out).all(), what
    if np.abs(ref).max() == 0:
        assert not out.any(), what
    else:
        assert nmse(out, ref) <= 5e-4, (what, nmse(out, ref))


def caches(kp, vp, k_type, v_type, layout):
    if layout == "HND":
        kp, vp = kp.swapaxes(1, 2), vp.swapaxes(1, 2)
    return PagedKV.from_array(kp, k_type, layout=layout), PagedKV.from_array(vp, v_type, layout=layout)


@st.composite
def batches(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.integers(1, 16))
    long = draw(st.booleans())
    lens = draw(st.lists(st.integers(0, 2000 if long else 300), min_size=batch, max_size=batch))
    rows = {"decode": st.just(1), "speculative": st.integers(2, 8), "prefill": st.integers(0, 24)}
    q_lens = [draw(rows[draw(st.sampled_from(sorted(rows)))]) for _ in range(batch)]
    if sum(q_lens) == 0:
        q_lens[0] = 1
    hkv = draw(st.sampled_from([1, 2]))
    dk, dv = draw(st.sampled_from(HEADS))
    k_type, v_type = draw(st.sampled_from(TYPES)), draw(st.sampled_from(["f16", "q8_0", "f32", "q4_1"]))
    bs = draw(st.sampled_from([16, 32, 64, 128, 256]))
    hq = hkv * draw(st.sampled_from([1, 4]))
    q, kp, vp, table, seq_lens, cu = make_paged_problem(
        rng, bs=bs, lens=lens, q_lens=q_lens, hkv=hkv, hq=hq, dk=dk, dv=dv, t="f32",
        share=batch > 1 and draw(st.booleans()), spare_pages=draw(st.integers(0, 2)),
        spare_columns=draw(st.integers(0, 2)))
    features = {"causal": draw(st.booleans()), "softcap": draw(st.sampled_from([0.0, 20.0])),
                "window": draw(st.sampled_from([None, 7, 100])),
                "sinks": rng.standard_normal(q.shape[1]) if draw(st.booleans()) else None}
    layout = draw(st.sampled_from(["NHD", "HND"]))
    split_k = draw(st.sampled_from([None, None, 3]))
    return q, kp, vp, table, seq_lens, cu, k_type, v_type, layout, split_k, features


@settings(max_examples=24, deadline=None, derandomize=True)
@given(batches())
def test_paged_kernels_match_the_paged_reference(batch):
    q, kp, vp, table, seq_lens, cu, k_type, v_type, layout, split_k, features = batch
    k_cache, v_cache = caches(kp, vp, k_type, v_type, layout)
    with kgen.paged_plan(q, k_cache, v_cache, block_table=table, seq_lens=seq_lens, cu_seqlens_q=cu,
                         split_k=split_k, **features) as p:
        out = p(q, k_cache, v_cache, block_table=table, seq_lens=seq_lens, cu_seqlens_q=cu, sinks=features["sinks"])
        what = (p.variant.uri, p.splits, seq_lens.tolist(), np.diff(cu).tolist())
    ref = reference.paged_attention(q, k_cache, v_cache, table, seq_lens, cu, **features)
    check(out, ref, what)
    for b, n in enumerate(seq_lens):           # an empty sequence gives zeros, sinks or not
        if n == 0:
            assert not out[cu[b]:cu[b + 1]].any(), what
