"""coopmat1's direct schedule: f16 K/V loaded straight into matrix operands (no staging).

The rules run everywhere; the kernels run where coopmat1 exists (an H100 in the GPU
verification) and elsewhere forcing one must fail naming the path, before any submission.
"""
import numpy as np
import pytest

import kgen
from kgen.errors import InvalidVariant, KgenError
from kgen.kvtensor import KvLayout
from kgen.paths import coopmat1
from kgen.paths.coopmat1 import direct_reason
from kgen.profiles import H100
from kgen.runtime import open_device
from kgen.space import why_invalid
from kgen.variant import Schedule, Variant

from test_attention import check, make_inputs, run_plan

BASE = dict(path="coopmat1", head_k=128, head_v=128, k_type="f16", v_type="f16", br=16, bc=64,
            wg=128, mat_m=16, mat_n=16, mat_k=16, schedule=Schedule.DIRECT)


def test_uri_round_trip():
    v = Variant(**BASE, mask=True, split_k=True)
    assert "_direct_" in v.uri
    assert Variant.parse(v.uri) == v


@pytest.mark.parametrize("change, words", [
    (dict(k_type="q8_0"), "only f16"),
    (dict(v_type="q4_0"), "only f16"),
    (dict(head_k=136, head_v=136), "multiple of mat_k=16"),
])
def test_rules_name_the_limit(change, words):
    with pytest.raises(InvalidVariant, match=words):
        Variant(**dict(BASE, **change))


def test_other_paths_reject_the_schedule():
    with pytest.raises(InvalidVariant, match="schedule=direct"):
        Variant(path="scalar", head_k=128, head_v=128, k_type="f16", v_type="f16", br=8, bc=32,
                wg=128, d_split=4, row_split=1, schedule=Schedule.DIRECT)
    with pytest.raises(InvalidVariant, match="schedule=direct"):
        Variant(path="coopmat2", head_k=128, head_v=128, k_type="f16", v_type="f16", br=32, bc=32,
                wg=128, schedule=Schedule.DIRECT)


def test_no_staging_buffer_and_mla_fits_with_wide_tiles():
    names = {a.name for a in coopmat1.layout(Variant(**BASE)).shared}
    assert "KVsh" not in names and "Qsh" in names
    mla = Variant(**dict(BASE, head_k=576, head_v=512, bc=256, wg=256))
    assert why_invalid(mla, H100) is None
    assert coopmat1.layout(mla).shared_bytes <= H100.max_shared_memory


def test_h100_candidates_include_direct_only_for_f16():
    from kgen.problem import ProblemClass
    f16 = ProblemClass.parse("576/512 f16/f16 acc32 - nq0 nkv3 gqa0")
    q8 = ProblemClass.parse("128/128 q8_0/q8_0 acc32 mask nq0 nkv3 gqa0")
    assert any(k["schedule"] is Schedule.DIRECT for k in coopmat1.candidates(f16, H100))
    assert not any(k["schedule"] is Schedule.DIRECT for k in coopmat1.candidates(q8, H100))


def test_direct_reason_checks_layouts_and_length():
    v = Variant(**BASE)
    dense = KvLayout((128, 128 * 100, 128 * 100), 0, 0)
    assert direct_reason(v, 100, {"k": dense, "v": dense}) is None
    odd = KvLayout((132, 132 * 100, 132 * 100), 0, 0)
    assert "multiples of 8" in direct_reason(v, 100, {"k": odd, "v": dense})
    assert "offset 4" in direct_reason(v, 100, {"k": dense, "v": KvLayout((128, 12800, 12800), 4, 0)})
    assert "at least bc=64" in direct_reason(v, 40, {"k": dense, "v": dense})
    assert direct_reason(v.replace(aligned=True), 128, {"k": dense, "v": dense}) is None
    assert direct_reason(v.replace(schedule=Schedule.BASE), 40, {"k": odd, "v": odd}) is None


def _has_coopmat1() -> bool:
    return coopmat1.supports(open_device(None).caps) is None


# (name, Hq, Hkv, Nq, Nkv, head_k, head_v, mask, causal, precision, splits, bc)
CASES = [
    ("prefill-unaligned-mask-causal", 4, 2, 48, 200, 128, 128, True, True, "f32", 1, 64),
    ("decode-split-aligned", 8, 2, 1, 512, 128, 128, True, False, "f32", 4, 64),
    ("decode-split-tail", 8, 2, 1, 300, 128, 128, False, False, "f32", 3, 64),
    ("acc16-wide-tile", 2, 1, 20, 700, 64, 64, True, False, "f16", 1, 256),
    ("mla-decode-tail", 16, 1, 1, 333, 576, 512, False, False, "f32", 2, 32),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_direct_kernels_match_the_reference(case):
    name, hq, hkv, nq, nkv, dk, dv, use_mask, causal, precision, splits, bc = case
    rng = np.random.default_rng(len(name))
    q, k, v = make_inputs(rng, 1, hq, hkv, nq, nkv, dk, dv)
    mask = None
    if use_mask:
        mask = rng.standard_normal((nq, nkv)).astype(np.float32)
        mask[:, 5:70] = -np.inf
    variant = Variant(**dict(BASE, head_k=dk, head_v=dv, bc=bc, acc=16 if precision == "f16" else 32,
                             mask=use_mask, causal=causal, split_k=splits > 1,
                             aligned=nkv % bc == 0))
    kw = dict(mask=mask, causal=causal, precision=precision)
    if not _has_coopmat1():
        with pytest.raises(KgenError, match="coopmat1|cooperative"):
            kgen.plan(q, k, v, variant=variant, split_k=splits, **kw)
        return
    p, out, v = run_plan(q, k, v, variant, splits, mla_type="f16" if dk == 576 else None, **kw)
    assert p.variant == variant and p.splits == splits
    check(out, q, k, v, mask=mask, causal=causal)
