"""The coopmat1 path without a device: rules, layout arithmetic, space, defaults, rendering, and
a representative compile subset (glslang + spirv-val)."""
import dataclasses
import itertools
import re

import pytest

from kgen.profiles import H100 as PROFILE_H100
from kgen.caps import CoopMatShape
from kgen.errors import InvalidVariant, ToolchainError
from kgen.paths import coopmat1 as cm1
from kgen.problem import ProblemClass
from kgen.render import render
from kgen.space import enumerate_space, why_invalid
from kgen.variant import FEATURES, PathKind, Schedule, Variant

HEAD_PAIRS = ((32, 32), (40, 40), (64, 64), (72, 72), (80, 80), (96, 96), (128, 128), (192, 128),
              (256, 256), (320, 256), (512, 512), (576, 512))


def _shapes(*mnk):
    return tuple(CoopMatShape(m, n, k, "f16", "f16", c, c) for (m, n, k), c in
                 itertools.product(mnk, ("f16", "f32")))


# The H100 record (kgen/data/h100.json) with only the coopmat1 parts coopmat1 reads.
H100 = dataclasses.replace(
    PROFILE_H100, extensions=("VK_KHR_cooperative_matrix",),
    coopmat_shapes=_shapes((16, 16, 16), (16, 8, 16), (16, 8, 8)),
)


def cm1_variant(**kw) -> Variant:
    base = dict(path="coopmat1", head_k=128, head_v=128, k_type="f16", v_type="f16", br=16, bc=64,
                wg=128, mat_m=16, mat_n=16, mat_k=16)
    return Variant(**{**base, **kw})


# --- rules ------------------------------------------------------------------------------------
@pytest.mark.parametrize("change,field", [
    (dict(d_split=4), "d_split"), (dict(row_split=4), "row_split"), (dict(mat_m=0), "mat_m"),
    (dict(mat_n=12), "mat_n"), (dict(br=24), "br"), (dict(bc=40), "bc"), (dict(bc=8), "bc"),
    (dict(wg=96), "wg"), (dict(br=16, wg=256, bc=8, mat_n=8, mat_k=8), "bc"),
])
def test_template_rules_raise_naming_the_field(change, field):
    with pytest.raises(InvalidVariant, match=field):
        cm1_variant(**change)


def test_supports_names_what_is_missing():
    assert cm1.supports(H100) is None
    none = dataclasses.replace(H100, extensions=(), coopmat_shapes=())
    assert "cooperative" in cm1.supports(none)
    f16_only = dataclasses.replace(H100, coopmat_shapes=tuple(
        s for s in H100.coopmat_shapes if s.c_type == "f16"))
    assert "f32" in cm1.supports(f16_only)
    partial = dataclasses.replace(H100, compute_full_subgroups=False)
    assert "computeFullSubgroups" in cm1.supports(partial)


def test_device_reason_needs_the_shape_for_each_accumulator():
    assert cm1.device_reason(cm1_variant(), H100) is None
    assert "16x16x32" in cm1.device_reason(cm1_variant(mat_k=32), H100)
    f32_only = dataclasses.replace(H100, coopmat_shapes=tuple(
        s for s in H100.coopmat_shapes if s.c_type == "f32"))
    assert cm1.device_reason(cm1_variant(acc=32), f32_only) is None
    assert "f16" in cm1.device_reason(cm1_variant(acc=16), f32_only)  # O in f16 needs f16 C


# --- layout -----------------------------------------------------------------------------------
def _all_layouts():
    for (hk, hv), schedule, (m, n, k), bc, nsg in itertools.product(
            HEAD_PAIRS, (Schedule.BASE, Schedule.STAGE), ((16, 16, 16), (16, 8, 16), (16, 8, 8)),
            (16, 64, 128), (2, 4, 8)):
        try:
            v = cm1_variant(head_k=hk, head_v=hv, mat_m=m, mat_n=n, mat_k=k, bc=bc, wg=32 * nsg,
                            schedule=schedule)
        except InvalidVariant as exc:
            assert "staging step" in exc.reason  # whole-tile staging of big tiles: too many registers
            continue
        yield v, cm1.layout(v)


def test_layout_keeps_matrix_loads_aligned_and_tiles_covered():
    for v, L in _all_layouts():
        # coopMatLoad/Store rows start 16-byte aligned: f16 strides/offsets in multiples of 8
        # halves, f32 in multiples of 4 floats; f16vec4 arrays take offsets / 4.
        for stride in (L.q_stride, L.k_stride, L.v_stride, L.p_stride):
            assert stride % 8 == 0, (v.uri, stride)
        assert L.s_stride % 4 == 0 and (v.mat_n * 4) % 16 == 0
        assert L.hsk_pad % v.mat_k == 0 and L.hsk_pad >= v.head_k > L.hsk_pad - v.mat_k
        assert L.hsv_pad % v.mat_n == 0 and L.hsv_pad >= v.head_v > L.hsv_pad - v.mat_n
        assert L.k_chunk % v.mat_k == 0 and L.k_chunks * L.k_chunk >= L.hsk_pad
        assert (L.k_chunks - 1) * L.k_chunk < L.hsk_pad
        assert L.v_rows % v.mat_k == 0 and v.bc % L.v_rows == 0
        assert L.s_per_sg * L.subgroups >= L.s_tiles and L.o_per_sg * L.subgroups >= L.o_tiles
        assert L.row_groups * L.rows_per_thread == v.br and v.subgroup % L.tpr == 0
        assert L.k_step * v.wg * 4 >= v.bc * L.k_chunk and L.v_step * v.wg * 4 >= L.v_rows * L.hsv_pad
        assert L.staged <= cm1.STAGED_MAX
        ssh = next(a for a in L.shared if a.name == "Ssh")
        assert ssh.length >= L.subgroups * v.mat_m * v.mat_n  # epilogue staging tiles fit


def test_shared_bytes_is_what_the_rendered_shader_declares():
    sizes = {"f16vec4": 8, "float16_t": 2, "float": 4}
    for v in (cm1_variant(), cm1_variant(head_k=576, head_v=512, acc=16, mat_n=8, bc=32),
              cm1_variant(head_k=40, head_v=40, schedule="stage", br=32, wg=64)):
        declared = re.findall(r"^shared (\w+) \w+\[(\d+)\];", render(v), re.M)
        assert len(declared) == len(cm1.layout(v).shared)
        assert sum(sizes[t] * int(n) for t, n in declared) == cm1.layout(v).shared_bytes


# --- space and defaults -----------------------------------------------------------------------
@pytest.mark.parametrize("hk,hv", HEAD_PAIRS)
@pytest.mark.parametrize("acc", (32, 16))
def test_default_is_valid_and_fits_48k(hk, hv, acc):
    v = cm1.default(ProblemClass(head_k=hk, head_v=hv, acc=acc, features=("mask",)), H100)
    assert (v.br, v.wg, v.mat_m, v.mat_n, v.mat_k) == (16, 128, 16, 16, 16)
    assert why_invalid(v, H100) is None
    assert cm1.layout(v).shared_bytes <= 49152


def test_mla_default_streams_and_fits():
    v = cm1.default(ProblemClass(head_k=576, head_v=512, k_type="q8_0", v_type="q8_0"), H100)
    L = cm1.layout(v)
    assert (v.bc, v.schedule, L.k_chunk, L.v_rows) == (64, Schedule.BASE, 64, 16)
    assert L.shared_bytes == 43008


@pytest.mark.parametrize("nq_bucket", (0, 3))
def test_space_is_tens_to_hundreds_with_unique_uris(nq_bucket):
    for hk, hv in ((64, 64), (128, 128), (576, 512)):
        problem = ProblemClass(head_k=hk, head_v=hv, features=("mask", "causal"), nq_bucket=nq_bucket)
        knobs = list(cm1.candidates(problem, H100))
        assert 20 <= len(knobs) <= 450  # f16 adds direct; split_sync triples regs
        space = enumerate_space(problem, H100, paths=(PathKind.COOPMAT1,))
        assert len(space.valid) >= 20
        assert len({v.uri for v in space.valid}) == len(space.valid)
        assert all(Variant.parse(v.uri) == v for v in space.valid)
        assert cm1.default(problem, H100) in space.valid


def test_render_covers_features_types_and_alignment():
    for feats, kt, vt, aligned in ((FEATURES, "q4_1", "iq4_nl", False), ((), "bf16", "f32", True),
                                   (("mask", "alibi", "sinks"), "q5_0", "q5_1", False)):
        v = cm1_variant(k_type=kt, v_type=vt, aligned=aligned, **{f: True for f in feats})
        src = render(v)
        assert "coopMatMulAdd" in src and "{{" not in src and "{%" not in src
        assert ("kv0 + j < kv_end" in src) != aligned  # bounds checks only when unaligned
        assert ("stats_data[" in src) == v.split_k
        assert ("sink_data[h]" in src) == (v.sinks and not v.split_k)  # split-k: the reduce adds sinks


# --- compile ----------------------------------------------------------------------------------
REPRESENTATIVE = (
    dict(),
    dict(head_k=576, head_v=512, k_type="q8_0", v_type="q8_0", acc=16, mat_n=8, bc=32,
         mask=True, causal=True, alibi=True, softcap=True, sinks=True),
    dict(head_k=40, head_v=40, k_type="q4_1", v_type="iq4_nl", split_k=True, aligned=True,
         schedule="stage"),
    dict(head_k=72, head_v=72, k_type="q5_0", v_type="q5_1", br=32, wg=64, mat_n=8, mat_k=8,
         causal=True, split_k=True, sinks=True),
    dict(head_k=192, head_v=128, k_type="bf16", v_type="f32", acc=16, br=32, bc=32,
         mask=True, schedule="stage"),
    dict(head_k=64, head_v=64, k_type="f32", v_type="bf16", acc=16, br=64, wg=256, bc=32),
    dict(head_k=64, head_v=64, br=64, wg=32),
    dict(head_k=320, head_v=256, k_type="q4_0", v_type="f16", mat_n=8, bc=128, wg=256, softcap=True),
)


def test_representative_variants_compile(tmp_path):
    from kgen.compile import SpirvCache, compile_many
    variants = [cm1_variant(**kw) for kw in REPRESENTATIVE]
    assert [why_invalid(v, H100) for v in variants] == [None] * len(variants)
    try:
        results = compile_many(variants, jobs=2,
                               cache=SpirvCache(tmp_path))
    except ToolchainError as exc:
        pytest.fail(f"no GLSL compiler: {exc} (scripts/bootstrap.sh installs one)")
    failures = {uri: str(r) for uri, r in results.items() if isinstance(r, Exception)}
    assert not failures, "\n\n".join(failures.values())
