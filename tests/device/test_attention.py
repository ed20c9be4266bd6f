"""kgen.attention against the float64 reference on the default device (lavapipe in CI).

Every case: random inputs (never all zero), NMSE <= 5e-4, no NaN or Inf.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import kgen
from kgen import reference
from kgen.quant import roundtrip
from kgen.types import KvType

NMSE_MAX = 5e-4
HEADS = [(32, 32), (40, 40), (64, 64), (72, 72), (128, 128), (192, 128), (256, 256), (576, 512)]


def make_inputs(rng, b, hq, hkv, nq, nkv, dk, dv):
    q = rng.standard_normal((b, hq, nq, dk)).astype(np.float32)
    k = rng.standard_normal((b, hkv, nkv, dk)).astype(np.float32)
    v = rng.standard_normal((b, hkv, nkv, dv)).astype(np.float32)
    return q, k, v


def case_inputs(name, b, hq, hkv, nq, nkv, dk, dv, use_mask):
    """(q, k, v, mask) of a named kernel case, seeded by its name; with `use_mask` a random
    (nq, nkv) mask that also hides keys 5-39 of every row, else None."""
    rng = np.random.default_rng(len(name))
    q, k, v = make_inputs(rng, b, hq, hkv, nq, nkv, dk, dv)
    mask = None
    if use_mask:
        mask = rng.standard_normal((nq, nkv)).astype(np.float32)
        mask[:, 5:40] = -np.inf
    return q, k, v, mask


def run_plan(q, k, v, variant, splits, *, mla_type=None, **kw):
    """Plan `variant` with `splits`, run it once and return (plan, output, V's values). With
    `mla_type`, K goes in as a KVTensor of that type and V as the view of its first head_v
    columns (DeepSeek MLA: V inside K's bytes, no copy)."""
    from kgen.kvtensor import KVTensor
    k_in, v_in = k, v
    if mla_type is not None:
        k_in = KVTensor.from_array(k, mla_type)
        v_in = KVTensor(k_in.data, k_in.type, k_in.shape[:3] + (v.shape[3],), k_in.strides)
        v = k[..., :v.shape[3]]
    with kgen.plan(q, k_in, v_in, variant=variant, split_k=splits, **kw) as p:
        out = p(q, k_in, v_in, mask=kw.get("mask"))
    return p, out, v


def check(out, q, k, v, *, k_type="f16", v_type="f16", **kw):
    ref = reference.attention(q, roundtrip(k, k_type), roundtrip(v, v_type), **kw)
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    err = reference.nmse(out, ref)
    assert err <= NMSE_MAX, f"NMSE {err:.3g} > {NMSE_MAX}"
    return ref


# The ranges (Nq 1..200, Nkv 1..600, GQA 1..8, B 1..3, every head size), with the
# work per example capped so that lavapipe on two cores stays within seconds.
MAX_WORK = 3e7  # B * Hq * Nq * Nkv * (Dk + Dv) multiply-adds


@st.composite
def problems(draw, heads=HEADS):
    dk, dv = draw(st.sampled_from(heads))
    hkv = draw(st.integers(1, 2))
    b, hq = draw(st.integers(1, 3)), hkv * draw(st.sampled_from([1, 2, 4, 8]))
    nq = draw(st.one_of(st.integers(1, 24), st.integers(25, 200)))
    nkv = draw(st.one_of(st.integers(1, 70), st.integers(71, 600)))
    nkv = max(1, min(nkv, int(MAX_WORK / (b * hq * nq * (dk + dv)))))
    return dict(b=b, hkv=hkv, hq=hq, nq=nq, nkv=nkv, dk=dk, dv=dv)


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems(), kv=st.sampled_from([t.label for t in KvType]), precision=st.sampled_from(["f32", "f16"]),
       seed=st.integers(0, 2**32 - 1))
def test_random_shapes_and_types(p, kv, precision, seed):
    rng = np.random.default_rng(seed)
    q, k, v = make_inputs(rng, p["b"], p["hq"], p["hkv"], p["nq"], p["nkv"], p["dk"], p["dv"])
    out = kgen.attention(q, k, v, k_type=kv, v_type=kv, precision=precision)
    check(out, q, k, v, k_type=kv, v_type=kv)


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems(), causal=st.booleans(), window=st.sampled_from([None, 1, 5]),
       softcap=st.sampled_from([0.0, 2.0]), alibi=st.sampled_from([0.0, 8.0]), use_sinks=st.booleans(),
       mask_kind=st.sampled_from(["none", "float", "bool", "row_broadcast"]), seed=st.integers(0, 2**32 - 1))
def test_features(p, causal, window, softcap, alibi, use_sinks, mask_kind, seed):
    rng = np.random.default_rng(seed)
    q, k, v = make_inputs(rng, p["b"], p["hq"], p["hkv"], p["nq"], p["nkv"], p["dk"], p["dv"])
    full = (p["b"], p["hq"], p["nq"], p["nkv"])
    mask = None
    if mask_kind == "float":
        mask = rng.standard_normal(full)
        mask[rng.random(full) < 0.2] = -np.inf
        mask[..., : p["nq"] // 2, : p["nkv"] // 2] = -np.inf   # a -inf block
        mask[..., p["nq"] - 1, :] = -np.inf                    # a fully masked row
    elif mask_kind == "bool":
        mask = rng.random(full) > 0.3
    elif mask_kind == "row_broadcast":
        mask = rng.standard_normal((p["nq"], p["nkv"]))
    if mask is None:
        alibi = 0.0
    sinks = rng.standard_normal(p["hq"]).astype(np.float32) if use_sinks else None
    kw = dict(mask=mask, causal=causal, window=window, softcap=softcap, alibi_max_bias=alibi, sinks=sinks)
    out = kgen.attention(q, k, v, **kw)
    check(out, q, k, v, **kw)


@pytest.mark.parametrize("dk,dv", HEADS)
def test_every_head_size(dk, dv):
    rng = np.random.default_rng(dk * 1000 + dv)
    q, k, v = make_inputs(rng, 1, 2, 1, 5, 37, dk, dv)
    check(kgen.attention(q, k, v), q, k, v)


def test_batch_longer_than_kv_causal_has_no_nan():
    rng = np.random.default_rng(1)
    q, k, v = make_inputs(rng, 1, 2, 2, 40, 9, 64, 64)
    out = kgen.attention(q, k, v, causal=True)
    ref = check(out, q, k, v, causal=True)
    assert np.all(out[:, :, : 40 - 9] == 0) and np.all(ref[:, :, : 40 - 9] == 0)


def test_fully_masked_rows_and_blocks_are_zero():
    rng = np.random.default_rng(2)
    q, k, v = make_inputs(rng, 1, 1, 1, 16, 64, 64, 64)
    mask = rng.standard_normal((16, 64))
    mask[3] = -np.inf            # a whole row
    mask[8:, :32] = -np.inf      # a block
    out = kgen.attention(q, k, v, mask=mask)
    check(out, q, k, v, mask=mask)
    assert np.all(out[0, 0, 3] == 0)


@pytest.mark.parametrize("splits", [2, 3])
def test_split_k_matches(splits):
    rng = np.random.default_rng(splits)
    q, k, v = make_inputs(rng, 1, 4, 2, 1, 200, 128, 128)
    sinks = rng.standard_normal(4).astype(np.float32)
    with kgen.plan(q, k, v, sinks=sinks, split_k=splits) as p:
        # Splits are whole KV tiles, so the plan may round the count down; it must still split.
        assert 2 <= p.splits <= splits and "splitk" in p.variant.uri
        assert p.split_kv % p.variant.bc == 0 and (p.splits - 1) * p.split_kv < 200 <= p.splits * p.split_kv
        out = p(q, k, v, sinks=sinks)
    check(out, q, k, v, sinks=sinks)


def test_split_k_reduce_with_many_splits_and_a_ragged_column_chunk():
    # head_v 72: 18 vec4 columns, so the reduce pass's second 16-column chunk has 2; 141 splits
    # (of 64 keys: whole tiles of 16, 32 or 64) take each reduce thread past its first round of
    # partial rows.
    rng = np.random.default_rng(11)
    q, k, v = make_inputs(rng, 1, 3, 1, 2, 9000, 72, 72)
    sinks = rng.standard_normal(3).astype(np.float32)
    with kgen.plan(q, k, v, sinks=sinks, split_k=150, path="scalar") as p:
        assert p.splits > 128
        out = p(q, k, v, sinks=sinks)
    check(out, q, k, v, sinks=sinks)


def test_plan_reuse_and_device_time():
    rng = np.random.default_rng(3)
    q, k, v = make_inputs(rng, 1, 2, 1, 8, 64, 64, 64)
    with kgen.plan(q, k, v) as p:
        for _ in range(3):
            q, k, v = make_inputs(rng, 1, 2, 1, 8, 64, 64, 64)
            check(p(q, k, v), q, k, v)
        assert p.run_device() > 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(precision="f64"), "precision"),
    (dict(window=0), "window"),
    (dict(softcap=-1.0), "softcap"),
    (dict(alibi_max_bias=1.0), "mask"),
    (dict(path="tensorcore"), "path"),
    (dict(k_type="q3_k"), "KV type"),
    (dict(sinks=np.zeros(3, np.float32)), "sinks"),
])
def test_bad_arguments_name_the_problem(kwargs, match):
    q, k, v = make_inputs(np.random.default_rng(0), 1, 2, 1, 4, 8, 64, 64)
    with pytest.raises(ValueError, match=match):
        kgen.attention(q, k, v, **kwargs)


def test_non_finite_inputs_are_refused_and_the_device_stays_usable():
    rng = np.random.default_rng(4)
    q, k, v = make_inputs(rng, 1, 2, 1, 4, 8, 64, 64)
    bad = k.copy()
    bad[0, 0, 3, 5] = np.nan
    with pytest.raises(ValueError, match="k has NaN"):
        kgen.attention(q, bad, v)
    check(kgen.attention(q, k, v), q, k, v)


def test_bad_shapes_name_the_limit():
    rng = np.random.default_rng(0)
    q, k, v = make_inputs(rng, 1, 3, 2, 4, 8, 64, 64)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        kgen.attention(q, k, v)
    q, k, v = make_inputs(rng, 1, 2, 1, 4, 8, 36, 64)
    with pytest.raises(ValueError, match="head_k=36"):
        kgen.attention(q, k, v)


@pytest.mark.parametrize("path", ["scalar", "coopmat1", "coopmat2"])
def test_forced_path_runs_or_says_why_not(path):
    """A forced path the device has must run it; one it lacks is a clear error naming the path."""
    q, k, v = make_inputs(np.random.default_rng(0), 1, 2, 1, 20, 40, 64, 64)
    from kgen.errors import KgenError
    from kgen.paths import path_spec
    from kgen.runtime import open_device
    reason = path_spec(path).supports(open_device(None).caps)
    if reason is None:
        with kgen.plan(q, k, v, path=path) as p:
            assert p.variant.path.value == path
            check(p(q, k, v), q, k, v)
    else:
        with pytest.raises(KgenError, match=path):
            kgen.attention(q, k, v, path=path)


@pytest.mark.parametrize("kv", ["f16", "q8_0", "q4_1"])
def test_prequantized_kv_tensor_with_strides(kv):
    """An engine's KV cache as is: ggml blocks, padded rows (extra capacity), an offset."""
    rng = np.random.default_rng(7)
    q, k, v = make_inputs(rng, 1, 2, 1, 6, 30, 64, 64)
    cache = np.concatenate([k, rng.standard_normal((1, 1, 10, 64)).astype(np.float32)], axis=2)
    dense = kgen.KVTensor.from_array(cache, kv)          # 40 rows of capacity, 30 used
    row = dense.strides[0]
    k_view = kgen.KVTensor(dense.data, kv, (1, 1, 30, 64), (row, row * 40, row * 40))
    out = kgen.attention(q, k_view, v, v_type=kv)
    check(out, q, k, v, k_type=kv, v_type=kv)


def test_mla_value_is_a_view_of_key():
    """DeepSeek MLA: V is the first 512 columns of K's 576, read from K's bytes."""
    rng = np.random.default_rng(8)
    q, k, _ = make_inputs(rng, 1, 4, 1, 3, 20, 576, 512)
    kt = kgen.KVTensor.from_array(k, "f16")
    v_view = kgen.KVTensor(kt.data, "f16", (1, 1, 20, 512), kt.strides)
    out = kgen.attention(q, kt, v_view)
    check(out, q, k, k[..., :512])


@pytest.mark.parametrize("n_q, causal, mask_rows", [(1, True, 1), (1, False, 1), (3, False, 1), (3, False, 3)])
def test_gqa_folding_keeps_the_answer(n_q, causal, mask_rows):
    """Decode-like calls stack a GQA group's query heads as rows of one head (kgen.api.fold_gqa):
    same bytes in and out, K/V read once per group. Where a row depends on its query index
    (a mask with Nq rows), nothing is folded."""
    from kgen.shapes import fold_gqa, shapes_of
    rng = np.random.default_rng(11 + n_q + mask_rows)
    q, k, v = make_inputs(rng, 2, 8, 2, n_q, 90, 64, 64)
    mask = rng.uniform(-2, 0, (mask_rows, 90)).astype(np.float32)
    mask[:, 5:20] = -np.inf
    folded = fold_gqa(shapes_of(q, k, v, mask=mask, causal=causal))
    assert (folded.heads_q == 2) == (mask_rows == 1)
    with kgen.plan(q, k, v, mask=mask, causal=causal) as p:
        assert p.kernel_shapes == folded
        out = p(q, k, v, mask=mask)
    check(out, q, k, v, mask=mask, causal=causal)
