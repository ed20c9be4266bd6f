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
from kgen.variant import FEATURES, PathKind, Variant

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
