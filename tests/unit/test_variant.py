"""Variant naming and validity: no device needed."""
import dataclasses
import itertools

import pytest
from hypothesis import given, strategies as st

from kgen.errors import InvalidVariant
from kgen.problem import ProblemClass
from kgen.profiles import H100, LAVAPIPE
from kgen.space import default_variant, enumerate_space, why_invalid
from kgen.types import KvType
from kgen.variant import FEATURES, PathKind, Schedule, Variant

HEAD_PAIRS = ((32, 32), (40, 40), (64, 64), (72, 72), (80, 80), (96, 96), (128, 128), (192, 128),
              (256, 256), (320, 256), (512, 512), (576, 512))


def problems(nq_buckets=(0, 3)):
    for (hk, hv), kv, nq in itertools.product(HEAD_PAIRS, KvType, nq_buckets):
        yield ProblemClass(head_k=hk, head_v=hv, k_type=kv, v_type=kv, features=("mask",), nq_bucket=nq)


def test_uri_round_trips_and_is_unique_over_the_space():
    seen = {}
    for caps in (H100, LAVAPIPE):
        for problem in problems():
            for v in enumerate_space(problem, caps).valid:
                assert Variant.parse(v.uri) == v
                assert seen.setdefault(v.uri, v) == v  # one uri, one variant
    assert len(seen) > 100


def test_uri_reads_as_documented():
    v = default_variant(ProblemClass(head_k=576, head_v=512, features=("mask",)), H100, PathKind.COOPMAT2)
    assert v.uri.startswith("fa_cm2_k576_v512_f16f16_acc32_br")
    assert v.uri.endswith("_mask")



# Uris of every schedule as tuning databases and exports hold them (named by the flags that the
# schedule field replaced): each parses to the variant of its schedule and prints back unchanged.
_CM1 = dict(path="coopmat1", k_type="f16", v_type="f16", subgroup=32, mat_m=16)
SCHEDULE_URIS = {
    "fa_cm1_k128_v128_f16f16_acc32_br16_bc64_wg128_sg32_m16n16k16_mask":
        dict(_CM1, head_k=128, head_v=128, br=16, bc=64, wg=128, mat_n=16, mat_k=16, mask=True),
    "fa_cm1_k128_v128_f16f16_acc32_br16_bc64_wg128_sg32_stage_m16n16k16_aligned":
        dict(_CM1, head_k=128, head_v=128, br=16, bc=64, wg=128, mat_n=16, mat_k=16,
             schedule=Schedule.STAGE, aligned=True),
    "fa_cm1_k128_v128_f16f16_acc32_br16_bc128_wg128_sg32_direct_m16n16k16_mask":
        dict(_CM1, head_k=128, head_v=128, br=16, bc=128, wg=128, mat_n=16, mat_k=16,
             schedule=Schedule.DIRECT, mask=True),
    "fa_cm1_k576_v512_f16f16_acc32_br16_bc32_wg128_sg32_stream_vink_m16n8k16_splitk_aligned":
        dict(_CM1, head_k=576, head_v=512, br=16, bc=32, wg=128, mat_n=8, mat_k=16,
             schedule=Schedule.STREAM, v_in_k=True, split_k=True, aligned=True),
    "fa_cm1_k256_v256_f16f16_acc32_br128_bc16_wg256_sg32_regs1_m16n8k16_mask_aligned":
        dict(_CM1, head_k=256, head_v=256, br=128, bc=16, wg=256, mat_n=8, mat_k=16,
             schedule=Schedule.REGS, frag_scheme=1, mask=True, aligned=True),
    "fa_cm1_k128_v128_f16f16_acc32_br128_bc64_wg256_sg32_regs1_sync1_m16n8k16_aligned":
        dict(_CM1, head_k=128, head_v=128, br=128, bc=64, wg=256, mat_n=8, mat_k=16,
             schedule=Schedule.REGS, frag_scheme=1, split_sync=1, aligned=True),
    "fa_cm1_k128_v128_q8_0q8_0_acc32_br128_bc64_wg256_sg32_regs1_kvf16_m16n8k16_mask_aligned":
        dict(_CM1, head_k=128, head_v=128, k_type="q8_0", v_type="q8_0", br=128, bc=64, wg=256,
             mat_n=8, mat_k=16, schedule=Schedule.REGS, frag_scheme=1, kv_f16=True, mask=True,
             aligned=True),
    "fa_cm1_k576_v512_f16f16_acc32_br64_bc32_wg256_sg32_regs1_osplit_vink_m16n8k16_mask_aligned":
        dict(_CM1, head_k=576, head_v=512, br=64, bc=32, wg=256, mat_n=8, mat_k=16,
             schedule=Schedule.OSPLIT, frag_scheme=1, v_in_k=True, mask=True, aligned=True),
    "fa_sc_k128_v128_f16f16_acc32_br16_bc32_wg128_sg32_ds4_rs1_aligned":
        dict(path="scalar", head_k=128, head_v=128, k_type="f16", v_type="f16", br=16, bc=32, wg=128,
             d_split=4, row_split=1, aligned=True),
    "fa_sc_k128_v128_f16f16_acc32_br1_bc16_wg128_sg8_ds8_rs1_stage_mask":
        dict(path="scalar", head_k=128, head_v=128, k_type="f16", v_type="f16", br=1, bc=16, wg=128,
             subgroup=8, d_split=8, row_split=1, schedule=Schedule.STAGE, mask=True),
    "fa_sc_k128_v128_f16f16_acc32_br1_bc128_wg128_sg32_ds16_rs1_stream_fusedred_mask_splitk":
        dict(path="scalar", head_k=128, head_v=128, k_type="f16", v_type="f16", br=1, bc=128,
             wg=128, d_split=16, row_split=1, schedule=Schedule.STREAM, fused_reduce=True, mask=True,
             split_k=True),
    "fa_cm2_k128_v128_f16f16_acc32_br16_bc32_wg64_sg32_mask":
        dict(path="coopmat2", head_k=128, head_v=128, k_type="f16", v_type="f16", br=16, bc=32,
             wg=64, mask=True),
}


@pytest.mark.parametrize("uri", SCHEDULE_URIS)
def test_each_schedule_keeps_its_uri(uri):
    v = Variant(**SCHEDULE_URIS[uri])
    assert v.uri == uri
    assert Variant.parse(uri) == v
    assert Variant.parse(uri).schedule is v.schedule


def test_every_schedule_has_a_uri_that_round_trips():
    seen = {Variant.parse(uri).schedule for uri in SCHEDULE_URIS}
    assert seen == set(Schedule)


def test_schedule_may_be_given_by_name():
    fields = SCHEDULE_URIS["fa_cm1_k128_v128_f16f16_acc32_br16_bc128_wg128_sg32_direct_m16n16k16_mask"]
    assert Variant(**dict(fields, schedule="direct")) == Variant(**fields)
    with pytest.raises(ValueError, match="unknown schedule 'kv_direct'; known: base, stage"):
        Variant(**dict(fields, schedule="kv_direct"))


@pytest.mark.parametrize("uri,schedule,allowed", [
    ("fa_sc_k128_v128_f16f16_acc32_br16_bc32_wg128_sg32_ds4_rs1_aligned", "direct", "base, stage, stream"),
    ("fa_cm2_k128_v128_f16f16_acc32_br16_bc32_wg64_sg32_mask", "stream", "base$"),
])
def test_paths_name_the_schedules_they_have(uri, schedule, allowed):
    with pytest.raises(InvalidVariant, match=f"schedule={schedule}: the .* path has {allowed}"):
        Variant.parse(uri).replace(schedule=schedule)


def test_frag_scheme_goes_with_the_register_schedules_only():
    regs = Variant.parse("fa_cm1_k256_v256_f16f16_acc32_br128_bc16_wg256_sg32_regs1_m16n8k16_mask_aligned")
    with pytest.raises(InvalidVariant, match="schedule=regs: .* set frag_scheme"):
        regs.replace(frag_scheme=0)
    with pytest.raises(InvalidVariant, match="frag_scheme=1: .* not of schedule=direct"):
        regs.replace(schedule=Schedule.DIRECT)
    with pytest.raises(InvalidVariant, match="split_sync .* not of schedule=osplit"):
        Variant.parse("fa_cm1_k576_v512_f16f16_acc32_br64_bc32_wg256_sg32_regs1_osplit_vink_m16n8k16_mask_aligned"
                      ).replace(split_sync=1)
    with pytest.raises(ValueError, match="two schedules"):
        Variant.parse("fa_cm1_k128_v128_f16f16_acc32_br16_bc64_wg128_sg32_stage_regs1_m16n16k16")


@pytest.mark.parametrize("field,value", [("acc", 8), ("head_k", 36), ("head_v", 584), ("head_k", 24),
                                         ("subgroup", 48), ("wg", 2048)])
def test_invalid_fields_raise_with_the_reason(field, value):
    base = default_variant(ProblemClass(head_k=128, head_v=128), H100, PathKind.SCALAR)
    with pytest.raises(InvalidVariant, match=field):
        dataclasses.replace(base, **{field: value})


def test_alibi_without_mask_is_rejected():
    base = default_variant(ProblemClass(head_k=128, head_v=128), H100, PathKind.SCALAR)
    with pytest.raises(InvalidVariant, match="alibi"):
        base.replace(alibi=True, mask=False)


def test_every_feature_appears_in_the_uri():
    base = default_variant(ProblemClass(head_k=128, head_v=128, features=FEATURES), H100, PathKind.SCALAR)
    for f in FEATURES:
        assert f.replace("_", "") in base.uri.split("_")
        off = {f: False, **({"alibi": False} if f == "mask" else {})}  # alibi needs the mask
        without = dataclasses.replace(base, **off)
        assert f not in without.features and f.replace("_", "") not in without.uri.split("_")


def test_paths_reject_each_others_knobs():
    scalar = default_variant(ProblemClass(head_k=128, head_v=128), H100, PathKind.SCALAR)
    with pytest.raises(InvalidVariant):
        scalar.replace(mat_m=16, mat_n=16, mat_k=16)
    cm2 = default_variant(ProblemClass(head_k=128, head_v=128), H100, PathKind.COOPMAT2)
    with pytest.raises(InvalidVariant):
        cm2.replace(d_split=4)


def test_why_invalid_checks_the_device():
    cm1 = default_variant(ProblemClass(head_k=128, head_v=128), H100, PathKind.COOPMAT1)
    assert why_invalid(cm1, H100) is None
    assert "coopmat" in why_invalid(cm1, LAVAPIPE).lower() or "cooperative" in why_invalid(cm1, LAVAPIPE).lower()
    tiny = dataclasses.replace(H100, max_shared_memory=1024)
    assert "shared memory" in why_invalid(cm1, tiny)
    no_fp16 = dataclasses.replace(LAVAPIPE, shader_float16=False)
    scalar16 = default_variant(ProblemClass(head_k=128, head_v=128, acc=16), LAVAPIPE, PathKind.SCALAR)
    assert "shaderFloat16" in why_invalid(scalar16, no_fp16)


def test_space_explains_rejections():
    space = enumerate_space(ProblemClass(head_k=576, head_v=512), LAVAPIPE)
    assert space.valid, "the scalar path must cover MLA heads on lavapipe"
    assert set(space.unsupported_paths) == {"coopmat1", "coopmat2"}
    assert all(reason for _, reason in space.rejected)


@given(hk=st.sampled_from([h for h, _ in HEAD_PAIRS]), kv=st.sampled_from(list(KvType)),
       nq=st.integers(0, 4), acc=st.sampled_from([16, 32]))
def test_default_variant_is_valid_for_its_device(hk, kv, nq, acc):
    problem = ProblemClass(head_k=hk, head_v=dict(HEAD_PAIRS)[hk], k_type=kv, v_type=kv, acc=acc, nq_bucket=nq)
    for caps in (H100, LAVAPIPE):
        v = default_variant(problem, caps)
        assert why_invalid(v, caps) is None
        assert (v.head_k, v.head_v, v.k_type, v.acc) == (hk, problem.head_v, kv, acc)
