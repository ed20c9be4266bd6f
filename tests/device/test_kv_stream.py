"""coopmat1's stream schedule: one row tile streams whole f16 K/V tiles (16-byte loads, the next
tile in flight), S split over head depth. Also the plan's one buffer for MLA's V inside K.

The rules run everywhere; the kernels run where coopmat1 exists (an H100 in the GPU
verification) and elsewhere forcing one must fail naming the path, before any submission.
"""
import numpy as np
import pytest

import kgen
from kgen.errors import InvalidVariant, KgenError
from kgen.kvtensor import KVTensor, KvLayout
from kgen.paths import coopmat1
from kgen.paths.coopmat1 import direct_reason
from kgen.problem import ProblemClass
from kgen.profiles import H100
from kgen.space import why_invalid
from kgen.variant import Schedule, Variant

from test_attention import case_inputs, check, make_inputs, run_plan
from test_kv_direct import _has_coopmat1

BASE = dict(path="coopmat1", head_k=128, head_v=128, k_type="f16", v_type="f16", br=16, bc=32,
            wg=128, mat_m=16, mat_n=16, mat_k=16, schedule=Schedule.STREAM)


def test_uri_round_trip():
    v = Variant(**BASE, mask=True, split_k=True)
    assert "_stream_" in v.uri
    assert Variant.parse(v.uri) == v


@pytest.mark.parametrize("change, words", [
    (dict(k_type="q8_0"), "16-byte"),
    (dict(br=32, wg=128), "one row tile"),
    (dict(head_k=576, head_v=512, bc=64, wg=64), "at most 24"),
])
def test_rules_name_the_limit(change, words):
    with pytest.raises(InvalidVariant, match=words):
        Variant(**dict(BASE, **change))


def test_coopmat2_rejects_the_schedule():
    # The scalar path has a stream schedule of its own (tests/device/test_scalar_stream.py).
    with pytest.raises(InvalidVariant, match="schedule=stream: the coopmat2 path has base"):
        Variant(path="coopmat2", head_k=128, head_v=128, k_type="f16", v_type="f16", br=32, bc=32,
                wg=128, schedule=Schedule.STREAM)


def test_layout_splits_depth_and_fits_mla():
    lay = coopmat1.layout(Variant(**BASE))
    assert {a.name for a in lay.shared} == {"Ksh", "Vsh", "Ssh", "Psh", "Rsh"}
    assert (lay.ks_steps, lay.ks_per_sg, lay.s_parts) == (8, 2, 4)
    # 32 keys x 128 halves = 512 16-byte elements of K and of V over 128 threads.
    assert (lay.k_step, lay.v_step, lay.staged) == (4, 4, 8)
    mla = Variant(**dict(BASE, head_k=576, head_v=512, bc=16, wg=256))
    assert why_invalid(mla, H100) is None
    assert coopmat1.layout(mla).ks_per_sg == 5      # 36 depth steps over 8 subgroups
    assert coopmat1.layout(mla).shared_bytes <= H100.max_shared_memory
    assert "Msh" in {a.name for a in coopmat1.layout(Variant(**BASE, mask=True)).shared}


def test_h100_candidates_offer_stream_for_one_row_tile_only():
    decode = ProblemClass.parse("576/512 f16/f16 acc32 - nq2 nkv3 gqa0")
    prefill = ProblemClass.parse("128/128 f16/f16 acc32 - nq3 nkv3 gqa0")
    valid = []
    for knobs in coopmat1.candidates(decode, H100):
        if knobs["schedule"] is Schedule.STREAM:
            try:
                valid.append(Variant(**knobs))
            except InvalidVariant as exc:
                assert "at most 24" in str(exc)   # only the register budget rules some out
    # MLA's 576/512 rows fit 48 KiB of shared memory in tiles of 16 keys.
    assert {v.bc for v in valid if why_invalid(v, H100) is None} == {16}
    assert not any(k["schedule"] is Schedule.STREAM for k in coopmat1.candidates(prefill, H100))


def test_v_in_k_reads_v_from_the_k_tile():
    mla = Variant(**dict(BASE, head_k=576, head_v=512, bc=16, wg=256, v_in_k=True))
    assert "_stream_vink_" in mla.uri and Variant.parse(mla.uri) == mla
    lay, own_v = coopmat1.layout(mla), coopmat1.layout(mla.replace(v_in_k=False))
    assert {a.name for a in lay.shared} == {"Ksh", "Ssh", "Psh", "Rsh"}
    assert (lay.v_step, lay.staged) == (0, lay.k_step) and own_v.v_step == 4  # 16 x 64 over 256
    assert lay.shared_bytes == own_v.shared_bytes - 16 * 520 * 2
    assert why_invalid(mla, H100) is None
    # Without a kernel that reads V from K the knob has no meaning.
    with pytest.raises(InvalidVariant, match="v_in_k with schedule=base"):
        Variant(**dict(BASE, schedule=Schedule.BASE, v_in_k=True))


def test_space_offers_v_in_k_streams_only_to_v_in_k_classes():
    own_v = ProblemClass.parse("576/512 f16/f16 acc32 - nq2 nkv3 gqa0")
    in_k = ProblemClass.parse("576/512 f16/f16 acc32 v_in_k nq2 nkv3 gqa0")
    def streams(problem):
        return {k["v_in_k"] for k in coopmat1.candidates(problem, H100) if k["schedule"] is Schedule.STREAM}
    assert streams(own_v) == {False} and streams(in_k) == {False, True}


def test_layout_reason_names_the_schedule():
    v = Variant(**BASE)
    dense = KvLayout((128, 128 * 100, 128 * 100), 0, 0)
    assert direct_reason(v, 20, {"k": dense, "v": dense}) is None   # short KV: loads are guarded
    odd = KvLayout((132, 132 * 100, 132 * 100), 0, 0)
    assert direct_reason(v, 100, {"k": odd, "v": dense}).startswith("schedule=stream reads k")


def test_v_in_k_plan_holds_one_buffer():
    """MLA: V given as a view of K's bytes is bound to K's buffer (no second copy on the device)
    and the result is right; a V that is not that view is refused at upload."""
    rng = np.random.default_rng(7)
    q, k, v = make_inputs(rng, 1, 4, 1, 3, 50, 576, 512)
    p, out, v = run_plan(q, k, v, None, None, mla_type="f16", path="scalar")
    assert p.v_in_k and "v" not in p._buffers
    check(out, q, k, v)
    kt = KVTensor.from_array(k, "f16")
    vt = KVTensor(kt.data, "f16", kt.shape[:3] + (512,), kt.strides)
    with kgen.plan(q, kt, vt, path="scalar") as plan:
        other = KVTensor(bytes(bytearray(kt.data)), "f16", vt.shape, vt.strides)
        with pytest.raises(ValueError, match="v_in_k"):
            plan.upload(q, kt, other)


# (name, Hq, Hkv, Nq, Nkv, head_k, head_v, mask, causal, precision, splits, bc, wg)
CASES = [
    ("decode-gqa4-mask-split", 8, 2, 1, 512, 128, 128, True, False, "f32", 4, 32, 128),
    ("decode-tail-no-split", 4, 4, 1, 300, 128, 128, False, False, "f32", 1, 32, 128),
    ("rows-11-mask-causal", 2, 1, 11, 200, 64, 64, True, True, "f32", 1, 16, 64),
    ("acc16-odd-heads", 4, 2, 1, 150, 72, 40, True, False, "f16", 2, 32, 256),
    ("mla-decode-tail", 16, 1, 1, 333, 576, 512, False, False, "f32", 3, 16, 256),
    ("mla-v-in-k-mask", 16, 1, 1, 300, 576, 512, True, False, "f32", 4, 16, 256),
    ("v-in-k-128-tail", 4, 1, 1, 201, 128, 96, False, False, "f32", 1, 32, 128),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_stream_kernels_match_the_reference(case):
    name, hq, hkv, nq, nkv, dk, dv, use_mask, causal, precision, splits, bc, wg = case
    q, k, v, mask = case_inputs(name, 1, hq, hkv, nq, nkv, dk, dv, use_mask)
    rows = nq * (hq // hkv) if not causal else nq   # GQA folds query heads into rows
    v_in_k = "v-in-k" in name   # V read from the K tile; the plan gets V as a view of K
    variant = Variant(**dict(BASE, head_k=dk, head_v=dv, bc=bc, wg=wg, acc=16 if precision == "f16" else 32,
                             mat_n=8 if dk == 72 else 16, mask=use_mask, causal=causal,
                             split_k=splits > 1, aligned=nkv % bc == 0, v_in_k=v_in_k))
    assert rows <= variant.br
    kw = dict(mask=mask, causal=causal, precision=precision)
    mla_type = "f16" if dk == 576 or v_in_k else None
    if not _has_coopmat1():
        with pytest.raises(KgenError, match="coopmat1|cooperative"):
            run_plan(q, k, v, variant, splits, mla_type=mla_type, **kw)
        return
    p, out, v = run_plan(q, k, v, variant, splits, mla_type=mla_type, **kw)
    assert p.variant == variant and p.splits == splits
    check(out, q, k, v, mask=mask, causal=causal)


def test_tuner_inputs_keep_v_inside_k():
    """A class timed with V inside K (the MLA cases) gets V as a view on K's bytes, so the tuner
    times the one-buffer plan that bench and callers run; V wider than K is refused."""
    from kgen.shapes import Shapes
    from kgen.tune.measure import Inputs
    s = Shapes(1, 4, 1, 2, 40, 576, 512, v_in_k=True)
    x = Inputs.random(s, np.random.default_rng(0))
    assert x.v.data is x.k.data and x.v.shape == (1, 1, 40, 512)
    assert np.array_equal(x.v_f32, x.k_f32[..., :512])
    assert x.nbytes == x.q.nbytes + len(x.k.raw)
    with pytest.raises(ValueError, match="v_in_k"):
        Shapes(1, 4, 1, 2, 40, 128, 256, v_in_k=True).validate()
