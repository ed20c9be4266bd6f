"""The paged float64 reference against the dense one, and the paged input rules (no device).

The dense side gathers each sequence token by token (page = table[b, t // block_size], slot =
t % block_size), independently of the reference's page gather, then runs reference.attention.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import kgen
from kgen import quant, reference
from kgen.paged import PagedKV, check_paged
from kgen.types import KvType

from helpers import make_paged_problem as make_problem

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


def naive_gather(pages: np.ndarray, row: np.ndarray, n: int) -> np.ndarray:
    """Tokens 0..n-1 of one sequence from NHD pages, one at a time: (1, Hkv, n, D)."""
    bs = pages.shape[1]
    tokens = [pages[row[t // bs], t % bs] for t in range(n)]
    return np.stack(tokens, axis=1)[None]


def dense_expected(q, k_pages, v_pages, table, lens, cu, **features):
    out = np.zeros((q.shape[0], q.shape[1], v_pages.shape[3]))
    for b, n in enumerate(lens):
        r0, r1 = cu[b], cu[b + 1]
        if n == 0 or r0 == r1:
            continue
        k, v = naive_gather(k_pages, table[b], n), naive_gather(v_pages, table[b], n)
        qb = q[r0:r1].transpose(1, 0, 2)[None]
        out[r0:r1] = reference.attention(qb, k, v, **features)[0].transpose(1, 0, 2)
    return out


@st.composite
def paged_problems(draw):
    """(q, k float pages NHD, v pages, table, seq_lens, cu_seqlens_q, kv type, features)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bs = draw(st.sampled_from([16, 32, 64]))
    batch = draw(st.integers(1, 6))
    hkv = draw(st.integers(1, 2))
    hq = hkv * draw(st.sampled_from([1, 2, 4]))
    dk, dv = draw(st.sampled_from([(32, 32), (40, 24), (64, 64)]))
    lens = draw(st.lists(st.integers(0, 300), min_size=batch, max_size=batch))
    rows = {"decode": st.just(1), "speculative": st.integers(2, 8), "prefill": st.integers(0, 40)}
    q_lens = [draw(rows[draw(st.sampled_from(sorted(rows)))]) for _ in range(batch)]
    if sum(q_lens) == 0:
        q_lens[0] = 1
    t = draw(st.sampled_from(["f16", "q8_0"]))
    problem = make_problem(rng, bs=bs, lens=lens, q_lens=q_lens, hkv=hkv, hq=hq, dk=dk, dv=dv, t=t,
                           share=batch > 1 and draw(st.booleans()), spare_pages=draw(st.integers(0, 3)),
                           spare_columns=draw(st.integers(0, 2)))
    features = {"causal": draw(st.booleans()), "softcap": draw(st.sampled_from([0.0, 20.0])),
                "window": draw(st.sampled_from([None, 7, 100])),
                "sinks": rng.standard_normal(hq) if draw(st.booleans()) else None}
    return (*problem, t, features)


@SETTINGS
@given(paged_problems())
def test_paged_reference_equals_dense_on_the_gathered_sequences(problem):
    q, kp, vp, table, lens, cu, t, features = problem
    k_cache, v_cache = PagedKV.from_array(kp, t), PagedKV.from_array(vp, t)   # exact: kp, vp are t's values
    got = reference.paged_attention(q, k_cache, v_cache, table, lens, cu, **features)
    want = dense_expected(q, kp, vp, table, lens, cu, **features)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    for b, n in enumerate(lens):                     # seq_len 0 gives zeros, whatever q holds
        if n == 0:
            assert not got[cu[b]:cu[b + 1]].any()
    check_paged(q, k_cache, v_cache, table, lens, cu, window=features["window"], softcap=features["softcap"],
                sinks=features["sinks"])


@SETTINGS
@given(paged_problems())
def test_nhd_hnd_and_engine_strides_agree(problem):
    q, kp, vp, table, lens, cu, t, features = problem
    nhd = reference.paged_attention(q, PagedKV.from_array(kp, t), PagedKV.from_array(vp, t), table, lens, cu,
                                    **features)
    hnd = reference.paged_attention(q, PagedKV.from_array(kp.swapaxes(1, 2), t, layout="HND"),
                                    PagedKV.from_array(vp.swapaxes(1, 2), t, layout="HND"), table, lens, cu,
                                    **features)
    arrays = reference.paged_attention(q, kp.swapaxes(1, 2), vp.swapaxes(1, 2), table, lens, cu,
                                       layout="HND", **features)
    np.testing.assert_array_equal(nhd, hnd)
    np.testing.assert_array_equal(nhd, arrays)
    # An engine's allocation: one spare page in front, pages padded by 64 rows of D.
    n, bs, h, d = kp.shape
    raw = quant.quantize(kp, t)                                    # (n, bs, h, row bytes)
    padded = np.zeros((n + 1, bs * h + 64, raw.shape[-1]), np.uint8)
    padded[1:, :bs * h] = raw.reshape(n, bs * h, -1)
    row = quant.n_blocks(t, d) * KvType.parse(t).block_size        # elements of one padded row
    engine = PagedKV(padded.tobytes(), t, n, bs, h, d, strides=((bs * h + 64) * row, h * row, row),
                     offset=(bs * h + 64) * row)
    got = reference.paged_attention(q, engine, PagedKV.from_array(vp, t), table, lens, cu, **features)
    np.testing.assert_array_equal(nhd, got)


@pytest.mark.parametrize("t", ["f16", "q8_0"])
def test_one_mixed_serving_batch(t):
    """Decode, speculative, prefill-chunk and empty rows; seq_len 0; shared prefix; 64-token pages."""
    rng = np.random.default_rng(7)
    q, kp, vp, table, lens, cu = make_problem(rng, bs=64, lens=[300, 200, 0, 1, 129, 64], q_lens=[1, 40, 3, 8, 0, 5],
                                              hkv=2, hq=8, dk=64, dv=64, t=t, share=True, spare_pages=2)
    assert table[1, 0] == table[0, 0]
    k_cache, v_cache = PagedKV.from_array(kp, t), PagedKV.from_array(vp, t)
    got = reference.paged_attention(q, k_cache, v_cache, table, lens, cu, causal=True)
    np.testing.assert_allclose(got, dense_expected(q, kp, vp, table, lens, cu, causal=True), rtol=1e-12, atol=1e-14)
    assert not got[cu[2]:cu[3]].any() and got[cu[1]:cu[2]].all()
    # Causal alignment per sequence: sequence 1's last row sees all 200 keys, its first row 161.
    k1, v1 = naive_gather(kp, table[1], 200), naive_gather(vp, table[1], 200)
    first = reference.attention(q[None, cu[1]:cu[1] + 1].swapaxes(1, 2), k1[:, :, :161], v1[:, :, :161])
    np.testing.assert_allclose(got[cu[1]], first[0, :, 0], rtol=1e-12)


def test_quantized_pages_are_dequantized():
    """q8_0 pages decode to the values a kernel sees, not to the floats they were made from."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 16, 1, 32))
    pages = PagedKV.from_array(x, "q8_0")
    assert len(pages.raw) == 2 * 16 * 34
    np.testing.assert_array_equal(pages.values(), quant.roundtrip(x, "q8_0"))
    assert not np.array_equal(pages.values(), x)


# --- bad input --------------------------------------------------------------------------------
def good_call():
    rng = np.random.default_rng(0)
    k = PagedKV.from_array(rng.standard_normal((4, 16, 2, 32)), "f16")
    v = PagedKV.from_array(rng.standard_normal((4, 16, 2, 32)), "f16")
    return dict(q=rng.standard_normal((5, 4, 32)), k_cache=k, v_cache=v,
                block_table=np.array([[0, 1], [2, -1]], np.int32), seq_lens=np.array([20, 16], np.int32),
                cu_seqlens_q=np.array([0, 3, 5], np.int32))


def _i32(x):
    return np.array(x, np.int32)


def _pages(shape, t="f16", **kw):
    return PagedKV.from_array(np.ones(shape), t, **kw)


BAD = [
    ("block_table", {"block_table": _i32([[0, 4], [2, -1]])}),           # index >= num_blocks
    ("block_table", {"block_table": _i32([[0, 1], [-1, 0]])}),           # negative index in use
    ("block_table", {"block_table": np.array([[0, 1], [2, 0]], np.int64)}),
    ("block_table", {"block_table": _i32([0, 1])}),
    ("seq_lens", {"seq_lens": _i32([-1, 16])}),
    ("seq_lens", {"seq_lens": _i32([33, 16])}),                         # > max_blocks_per_seq * 16
    ("seq_lens", {"seq_lens": np.array([20, 16], np.int64)}),
    ("seq_lens", {"seq_lens": _i32([20, 16, 1])}),
    ("cu_seqlens_q", {"cu_seqlens_q": _i32([1, 3, 5])}),
    ("cu_seqlens_q", {"cu_seqlens_q": _i32([0, 4, 3])}),
    ("cu_seqlens_q", {"cu_seqlens_q": _i32([0, 3, 6])}),
    ("cu_seqlens_q", {"cu_seqlens_q": _i32([0, 5])}),
    ("cu_seqlens_q", {"cu_seqlens_q": np.array([0, 3, 5], np.uint32)}),
    ("cu_seqlens_q", {"cu_seqlens_q": None}),                           # 5 rows, B = 2
    ("k_cache.block_size", {"k_cache": _pages((4, 8, 2, 32)), "v_cache": _pages((4, 8, 2, 32))}),
    ("k_cache.block_size", {"k_cache": _pages((4, 24, 2, 32)), "v_cache": _pages((4, 24, 2, 32))}),
    ("k_cache.block_size", {"k_cache": _pages((1, 512, 2, 32)), "v_cache": _pages((1, 512, 2, 32))}),
    ("k_cache.heads", {"k_cache": _pages((4, 16, 3, 32)), "v_cache": _pages((4, 16, 3, 32))}),  # 4 % 3
    ("k_cache.heads", {"v_cache": _pages((4, 16, 1, 32))}),
    ("k_cache.num_blocks", {"v_cache": _pages((5, 16, 2, 32))}),
    ("k_cache.head_dim", {"k_cache": _pages((4, 16, 2, 64))}),
    ("k_cache", {"k_cache": np.ones((4, 16, 2, 32), np.int32)}),
    ("q", {"q": np.ones((5, 4))}),
    ("q", {"q": np.full((5, 4, 32), np.nan)}),
    ("k_cache", {"k_cache": None}),
    ("causal", {"causal": "yes"}),
    ("window", {"window": 0}),
    ("softcap", {"softcap": -1.0}),
    ("sinks", {"sinks": np.zeros(3)}),
    ("v_cache", {"v_cache": PagedKV.from_array(np.where(np.arange(16)[:, None, None] == 3, np.inf, 1.0)
                                               * np.ones((4, 16, 2, 32)), "f32")}),
]


@pytest.mark.parametrize("name, change", BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_bad_input_names_the_argument_before_anything_runs(name, change):
    call = good_call() | change
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        kgen.paged_attention(call.pop("q"), call.pop("k_cache"), call.pop("v_cache"), **call)


def test_unused_table_entries_are_never_read():
    """Entries past a sequence's pages may hold anything (vLLM pads with -1 or stale ids)."""
    call = good_call()
    call["block_table"] = _i32([[0, 1], [2, 2**31 - 1]])
    check_paged(call["q"], call["k_cache"], call["v_cache"], call["block_table"], call["seq_lens"],
                call["cu_seqlens_q"])
    call["seq_lens"] = _i32([20, 17])
    with pytest.raises(ValueError, match=r"block_table\[1, 1\]=2147483647"):
        check_paged(call["q"], call["k_cache"], call["v_cache"], call["block_table"], call["seq_lens"],
                    call["cu_seqlens_q"])


def test_the_reference_refuses_tables_it_cannot_gather():
    call = good_call()
    args = [call[k] for k in ("q", "k_cache", "v_cache", "block_table", "seq_lens", "cu_seqlens_q")]
    for i, bad in ((3, _i32([[0, 1], [-1, 0]])), (4, _i32([33, 16])), (5, _i32([0, 3, 4]))):
        changed = list(args)
        changed[i] = bad
        with pytest.raises(ValueError):
            reference.paged_attention(*changed)


@pytest.mark.parametrize("field, value", [("block_size", 0), ("layout", "NDH"), ("strides", (1, 2)),
                                          ("strides", (512, 16, 8)), ("offset", -1), ("type", "q9"),
                                          ("data", np.array([object()] * 4096))])
def test_paged_kv_fields_are_checked(field, value):
    kw = dict(data=bytes(4 * 16 * 2 * 32 * 2), type="f16", num_blocks=4, block_size=16, heads=2, head_dim=32)
    with pytest.raises(ValueError, match=f"PagedKV.{field}"):
        PagedKV(**(kw | {field: value}))


def test_paged_kv_data_must_hold_every_page():
    with pytest.raises(ValueError, match="PagedKV.data has 4095 bytes"):
        PagedKV(bytes(4095), "f16", 4, 16, 2, 32)
    with pytest.raises(ValueError, match="multiples of 32"):
        PagedKV(bytes(1 << 16), "q8_0", 4, 16, 2, 32, strides=(1024, 48, 32))


def test_paged_variants_and_classes_carry_the_page_size():
    from kgen.errors import InvalidVariant
    from kgen.problem import ProblemClass, mismatch
    from kgen.variant import Variant
    v = Variant(path="scalar", head_k=64, head_v=64, k_type="f16", v_type="f16", br=4, bc=32, wg=64,
                subgroup=32, d_split=4, row_split=1, causal=True, page=16)
    assert v.uri.endswith("_pg16_causal") and Variant.parse(v.uri) == v
    for bad, words in (({"page": 24}, "page=24"), ({"mask": True}, "do not take mask"),
                       ({"aligned": True}, "do not take aligned")):
        with pytest.raises(InvalidVariant, match=words):
            v.replace(**bad)
    paged = ProblemClass(head_k=64, head_v=64, features=("causal",), page=16)
    assert paged.key == "64/64 f16/f16 acc32 causal+pg16 nq3 nkv3 gqa0" and ProblemClass.parse(paged.key) == paged
    assert mismatch(v, paged) is None
    assert "page" in mismatch(v.replace(page=32), paged) and "page" in mismatch(v.replace(page=0), paged)
    with pytest.raises(ValueError):
        ProblemClass.parse("64/64 f16/f16 acc32 causal+pg016 nq3 nkv3 gqa0")   # not canonical
