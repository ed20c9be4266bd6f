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
    features["precision"] = draw(st.sampled_from(["f32", "f32", "f16"]))
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
    features.pop("precision")
    ref = reference.paged_attention(q, k_cache, v_cache, table, seq_lens, cu, **features)
    check(out, ref, what)
    for b, n in enumerate(seq_lens):           # an empty sequence gives zeros, sinks or not
        if n == 0:
            assert not out[cu[b]:cu[b + 1]].any(), what


def small_batch(rng, *, lens=(37, 0, 70, 16), q_lens=(1, 3, 2, 1), bs=16, hkv=2, hq=8, d=64, spare_columns=1):
    return make_paged_problem(rng, bs=bs, lens=list(lens), q_lens=list(q_lens), hkv=hkv, hq=hq, dk=d, dv=d,
                              t="f32", share=True, spare_pages=2, spare_columns=spare_columns)


def test_a_plan_serves_new_lengths_tables_and_data():
    rng = np.random.default_rng(1)
    q, kp, vp, table, lens, cu = small_batch(rng)
    k_cache, v_cache = caches(kp, vp, "q8_0", "f16", "NHD")
    with kgen.paged_plan(q, k_cache, v_cache, block_table=table, seq_lens=lens, cu_seqlens_q=cu, causal=True) as p:
        for step in range(3):
            out = p(q, k_cache, v_cache, block_table=table, seq_lens=lens, cu_seqlens_q=cu)
            check(out, reference.paged_attention(q, k_cache, v_cache, table, lens, cu, causal=True), step)
            # The next call: other lengths within the table, pages swapped, fresh data.
            lens = np.minimum(lens[::-1] + 5, table.shape[1] * 16).astype(np.int32)
            table = table[::-1].copy()
            q = rng.standard_normal(q.shape)
            k_cache, v_cache = caches(rng.standard_normal(kp.shape), rng.standard_normal(vp.shape), "q8_0", "f16", "NHD")
            lens = np.array([min(n, 16 * int((row >= 0).sum())) for n, row in zip(lens, table)], np.int32)
        wider = np.array([0, 4, 5, 6, 7], np.int32)   # sequence 0 with 4 query tokens: the plan has 3
        with pytest.raises(ValueError, match="cu_seqlens_q"):
            p(rng.standard_normal((7, 8, 64)), k_cache, v_cache, block_table=table, seq_lens=lens, cu_seqlens_q=wider)


def test_a_hostile_table_is_clamped_on_the_device():
    """Past the host's checks (written straight into the plan's buffers), page indices, table
    columns and lengths are clamped into their buffers: the result is the reference's on the
    clamped table, and a valid call afterwards is still right."""
    rng = np.random.default_rng(2)
    q, kp, vp, table, lens, cu = small_batch(rng, lens=(40, 20, 70, 16))
    k_cache, v_cache = caches(kp, vp, "f16", "f16", "NHD")
    with kgen.paged_plan(q, k_cache, v_cache, block_table=table, seq_lens=lens, cu_seqlens_q=cu, split_k=2) as p:
        p.upload(q, k_cache, v_cache, block_table=table, seq_lens=lens, cu_seqlens_q=cu)
        nb, capacity = k_cache.num_blocks, p.capacity
        hostile = table.copy()
        hostile[0, :] = np.resize([-7, 10**9, nb, 2**31 - 1, -2**31], hostile.shape[1])
        hostile[2, 0] = nb + 3
        hostile_lens = np.array([capacity + 1000, -5, 70, 2**31 - 1], np.int32)
        p._buffers["block_table"].write(np.ascontiguousarray(hostile, "<i4"))
        p._buffers["seq_lens"].write(hostile_lens)
        p.run_device()
        out = p.result()
        clamped = np.clip(hostile, 0, nb - 1).astype(np.int32)
        want = reference.paged_attention(q, k_cache, v_cache, clamped, np.clip(hostile_lens, 0, capacity).astype(np.int32), cu)
        check(out, want, "clamped table")
        # Query starts out of order and past total_q: rows may collide, but nothing is read or
        # written outside the buffers and the values stay finite.
        p._buffers["cu_seqlens_q"].write(np.array([5, -3, 2**31 - 1, 0, 2], np.int32))
        p.run_device()
        assert np.isfinite(p.result()).all()
        out = p(q, k_cache, v_cache, block_table=table, seq_lens=lens, cu_seqlens_q=cu)
        check(out, reference.paged_attention(q, k_cache, v_cache, table, lens, cu), "after")


def test_mla_decode_reads_v_inside_k_pages_of_64():
    """DeepSeek MLA as engines run it: one latent KV head (576 = 512 + 64 rope), V the first 512
    columns of K's rows in K's own pages (FlashMLA's 64-token pages), 16 query heads on it."""
    rng = np.random.default_rng(3)
    q, kp, _, table, lens, cu = make_paged_problem(rng, bs=64, lens=[100, 64, 3], q_lens=[1, 2, 1], hkv=1, hq=16,
                                                   dk=576, dv=32, t="f32", share=False)
    k_cache = PagedKV.from_array(kp, "f16")
    v_cache = PagedKV(k_cache.data, "f16", k_cache.num_blocks, 64, 1, 512, strides=k_cache.strides)
    with kgen.paged_plan(q, k_cache, v_cache, block_table=table, seq_lens=lens, cu_seqlens_q=cu, causal=True,
                         scale=0.1) as p:
        assert p.v_in_k and "v" not in p._buffers      # one device copy of the latent cache
        out = p(q, k_cache, v_cache, block_table=table, seq_lens=lens, cu_seqlens_q=cu)
    check(out, reference.paged_attention(q, k_cache, v_cache, table, lens, cu, causal=True, scale=0.1))


def test_paths_without_paged_kernels_say_so():
    rng = np.random.default_rng(4)
    q, kp, vp, table, lens, cu = small_batch(rng)
    k_cache, v_cache = caches(kp, vp, "f16", "f16", "NHD")
    for path in ("coopmat1", "coopmat2"):
        with pytest.raises(NotImplementedError, match="scalar path only"):
            kgen.paged_attention(q, k_cache, v_cache, block_table=table, seq_lens=lens, cu_seqlens_q=cu, path=path)
