"""The scalar path's stream schedule: each thread keeps its columns of the current K/V tile in
registers while its loads of the next tile are in flight (decode: nothing else hides the memory
latency). Rules and the decode space run anywhere; the kernels run on every device (lavapipe in
CI) against the float64 reference, through the places the stream can go wrong: a ragged last
tile (rows past the split's end are clamped, then masked), KV splits, causal tile skipping,
block-quantized and f32 K/V (their registers are f32), GQA folding."""
import pytest

from kgen.errors import InvalidVariant
from kgen.paths import scalar
from kgen.problem import ProblemClass
from kgen.profiles import H100
from kgen.space import why_invalid
from kgen.variant import Schedule, Variant

from test_attention import case_inputs, check, run_plan

BASE = dict(path="scalar", head_k=64, head_v=64, k_type="f16", v_type="f16", br=4, bc=16, wg=32,
            subgroup=8, d_split=8, row_split=1, schedule=Schedule.STREAM)


def test_rules_and_uri():
    v = Variant(**BASE, mask=True, split_k=True)
    assert "_stream_" in v.uri and Variant.parse(v.uri) == v
    with pytest.raises(InvalidVariant, match="schedule=direct: the scalar path has base, stage, stream"):
        Variant(**dict(BASE, schedule=Schedule.DIRECT))
    with pytest.raises(InvalidVariant, match="schedule=stream"):
        Variant(path="coopmat2", head_k=128, head_v=128, k_type="f16", v_type="f16", br=32, bc=32,
                wg=128, schedule=Schedule.STREAM)


def test_registers_hold_f16_as_f16_and_the_rest_as_f32():
    lay = scalar.layout(Variant(**BASE))
    assert (lay.k_reg_type, lay.v_reg_type) == ("f16vec4", "f16vec4")
    lay = scalar.layout(Variant(**dict(BASE, k_type="q8_0", v_type="f32")))
    assert (lay.k_reg_type, lay.v_reg_type) == ("vec4", "vec4")


def test_decode_space_offers_stream_wide_workgroups_and_wide_dot_splits():
    decode = ProblemClass.parse("128/128 f16/f16 acc32 mask nq1 nkv4 gqa2")
    prefill = ProblemClass.parse("128/128 f16/f16 acc32 mask nq3 nkv4 gqa0")
    knobs = list(scalar.candidates(decode, H100))
    valid = [Variant(**k) for k in knobs if _valid(k)]
    assert any(v.schedule is Schedule.STREAM for v in valid)
    assert {256, 128} <= {v.wg for v in valid} and 16 in {v.d_split for v in valid}
    prefill_wgs = {k["wg"] for k in scalar.candidates(prefill, H100)}
    assert 256 not in prefill_wgs   # 8 subgroups only for decodes


def _valid(knobs: dict) -> bool:
    try:
        return why_invalid(Variant(**knobs), H100) is None
    except InvalidVariant:
        return False


# (name, B, Hq, Hkv, Nq, Nkv, Dk, Dv, mask, K type, V type, variant knobs, subgroups per
#  workgroup, splits, causal); lavapipe compiles each in seconds.
CASES = [
    ("gqa4-ragged-splits", 1, 8, 2, 1, 300, 64, 64, True, "f16", "f16", {}, 4, 3, False),
    ("q8-causal", 1, 4, 4, 2, 200, 64, 64, False, "q8_0", "q8_0", dict(br=2, d_split=4), 2, 1, True),
    ("f32-aligned-splits", 1, 2, 2, 3, 256, 64, 64, True, "f32", "f32", dict(bc=32, d_split=4), 4, 2,
     False),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_stream_kernel_matches_reference(case):
    name, b, hq, hkv, nq, nkv, dk, dv, use_mask, kt, vt, knobs, subgroups, splits, causal = case
    from kgen.runtime import open_device
    sg = open_device().caps.subgroup_size
    q, k, v, mask = case_inputs(name, b, hq, hkv, nq, nkv, dk, dv, use_mask)
    knobs = dict(BASE, head_k=dk, head_v=dv, k_type=kt, v_type=vt, subgroup=sg, wg=subgroups * sg,
                 **knobs)
    variant = Variant(**knobs, mask=use_mask, causal=causal, split_k=splits > 1,
                      aligned=nkv % knobs["bc"] == 0)
    _, out, v_used = run_plan(q, k, v, variant, splits, mask=mask, causal=causal, k_type=kt, v_type=vt)
    check(out, q, k, v_used, k_type=kt, v_type=vt, mask=mask, causal=causal)
