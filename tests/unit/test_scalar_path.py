"""The scalar path without a device: rules, layout arithmetic, shared-memory exactness, the tuning
space, defaults, rendering choices, and a representative compile subset (glslang + spirv-val)."""
import dataclasses
import itertools
import re
import struct

import pytest

from kgen.errors import InvalidVariant, ToolchainError
from kgen.paths import scalar
from kgen.problem import ProblemClass
from kgen.profiles import H100, LAVAPIPE
from kgen.render import render
from kgen.space import enumerate_space, why_invalid
from kgen.types import KV_TYPES
from kgen.variant import FEATURES, PathKind, Variant

HEAD_PAIRS = ((32, 32), (40, 40), (64, 64), (72, 72), (80, 80), (96, 96), (128, 128), (192, 128),
              (256, 256), (320, 256), (512, 512), (576, 512))
# Devices the scalar path must serve besides the two measured profiles (hand-written, the fields
# the scalar path reads): wave64 AMD with 64 KiB and with a 32 KiB Windows driver, an Intel with
# sizes 8-32, and a Mali-like device without subgroup size control or shaderFloat16.
AMD = dataclasses.replace(H100, name="AMD wave64", vendor_id=0x1002, subgroup_size=64,
                          min_subgroup_size=32, max_subgroup_size=64, max_shared_memory=65536)
AMD_32K = dataclasses.replace(AMD, name="AMD wave64 32 KiB", max_shared_memory=32768)
INTEL = dataclasses.replace(H100, name="Intel", vendor_id=0x8086, min_subgroup_size=8,
                            max_subgroup_size=32, max_shared_memory=65536)
MALI = dataclasses.replace(H100, name="Mali-like", vendor_id=0x13B5, subgroup_size=16,
                           min_subgroup_size=16, max_subgroup_size=16, subgroup_size_control=False,
                           max_shared_memory=32768, max_workgroup_invocations=512,
                           shader_float16=False)
DEVICES = (H100, LAVAPIPE, AMD, AMD_32K, INTEL, MALI)


def sc(**kw) -> Variant:
    """llama.cpp's NVIDIA prefill shape for 128/128 unless told otherwise."""
    base = dict(path="scalar", head_k=128, head_v=128, k_type="f16", v_type="f16", br=16, bc=32,
                wg=128, subgroup=32, d_split=8, row_split=4)
    return Variant(**{**base, **kw})


# --- rules ------------------------------------------------------------------------------------
@pytest.mark.parametrize("change,field", [
    (dict(mat_m=16, mat_n=16, mat_k=16), "mat_m"),
    (dict(d_split=0), "d_split"),
    (dict(d_split=3), "d_split"),
    (dict(d_split=64), "d_split"),                             # larger than the subgroup
    (dict(head_k=40, head_v=40), "head_k"),                    # 40 % (4 * 8)
    (dict(head_v=40, d_split=4), "head_v"),                    # 40 % (4 * 4)
    (dict(row_split=0), "row_split"),
    (dict(row_split=3), "row_split"),                          # does not divide br=16
    (dict(row_split=16, wg=64), "row_split"),                  # does not divide wg/d_split=8
    (dict(wg=96, row_split=2, br=2, d_split=8, bc=48), "row group"),  # 48 lanes straddle subgroups
    (dict(bc=26), "bc"),                                       # not a multiple of 4 column groups
    (dict(row_split=1, bc=8), "bc"),                           # 16 column groups > 8 columns
    (dict(head_k=576, head_v=512, bc=64), "exceeds 1152"),     # 4 rows x 16 columns x 34 vec4s
])
def test_rules_raise_naming_the_field(change, field):
    with pytest.raises(InvalidVariant, match=field):
        sc(**change)


def test_tile_work_admits_llamacpps_heaviest_shape():
    # 576/512 prefill on NVIDIA: 4 rows x 8 columns x (144 + 128) / 8 vec4s = 1088.
    v = sc(head_k=576, head_v=512)
    assert scalar.layout(v).tile_work == 1088 <= scalar.MAX_TILE_WORK


def test_valid_variants_round_trip_their_uri():
    for v in (sc(), sc(br=1, bc=64, row_split=1, schedule="stage", split_k=True),
              sc(head_k=40, head_v=40, d_split=2, bc=64, acc=16, mask=True, alibi=True),
              sc(wg=8, subgroup=8, d_split=1, row_split=4, br=4, bc=8)):
        assert scalar.check(v) is None
        assert Variant.parse(v.uri) == v


# --- layout -----------------------------------------------------------------------------------
def test_layout_matches_llamacpp_examples():
    # reference notes 1.5: NVIDIA, 128/128, N=512: 4 rows/thread, 8 cols/thread, 16 head elements.
    L = scalar.layout(sc())
    assert (L.rows_per_thread, L.cols_per_iter, L.cols_per_thread) == (4, 4, 8)
    assert 4 * L.hk4_per_thread == 16 and L.rowgroup_subgroups == 1 and L.shuffle_lanes == 32
    # Decode: Br 1, Bc 64, WG 128: 16 column groups of 8 threads, 4 columns each; the row group
    # is 4 subgroups, merged through shared memory.
    L = scalar.layout(sc(br=1, bc=64, row_split=1))
    assert (L.cols_per_iter, L.cols_per_thread, L.rowgroup_subgroups) == (16, 4, 4)


def test_shared_bytes_by_hand():
    assert scalar.layout(sc()).shared_bytes == 16 * 33 * 16                            # Q only, f32
    assert scalar.layout(sc(schedule="stage")).shared_bytes == (16 + 32) * 33 * 16      # + K/V tile
    assert scalar.layout(sc(schedule="stage", acc=16)).shared_bytes == (16 + 32) * 33 * 8
    # Decode merge: Q row + 4 subgroups x (O row + (m, l)).
    assert scalar.layout(sc(br=1, bc=64, row_split=1)).shared_bytes == 33 * 16 + 4 * (32 * 16 + 8)
    # MLA: the staged tile is as wide as the wider head.
    v = sc(head_k=576, head_v=512, br=1, bc=32, row_split=1, schedule="stage")
    assert scalar.layout(v).kv_stride4 == 576 // 4 + 1


_SHARED_RE = re.compile(r"^shared (\w+) (\w+)\[(\d+)\];$", re.M)


@pytest.mark.parametrize("v", [
    sc(), sc(schedule="stage"), sc(schedule="stage", acc=16), sc(br=1, bc=64, row_split=1),
    sc(br=1, bc=64, row_split=1, acc=16, schedule="stage", split_k=True),
    sc(head_k=576, head_v=512, br=2, bc=32, wg=256, row_split=2, d_split=16),
], ids=lambda v: v.uri)
def test_rendered_shared_arrays_are_exactly_the_layout(v):
    L = scalar.layout(v)
    declared = [(name, ty, int(n)) for ty, name, n in _SHARED_RE.findall(render(v))]
    assert declared == [(a.name, a.type, a.length) for a in L.shared]
    assert len(re.findall(r"^\s*shared\b", render(v), re.M)) == len(L.shared)
    size = {"vec4": 16, "f16vec4": 8, "vec2": 8}
    assert L.shared_bytes == sum(size[t] * n for _, t, n in declared)


# --- rendering choices ------------------------------------------------------------------------
def test_features_are_compiled_in_only_when_asked():
    plain = render(sc())
    for text in ("mask_data", "sink_data", "stats_data", "float alibi_slope", "bool kv_visible",
                 "pc.softcap * tanh", "KQ_MAX_OFFSET", "float16_t(", "barrier();\n        for"):
        assert text not in plain, text
    assert "if (kv0 + col < kv_end)" in plain                  # unaligned: bounds-checked
    assert "kv_end" not in render(sc(aligned=True)).split("O += P V")[1]
    full = render(sc(mask=True, causal=True, alibi=True, softcap=True, sinks=True))
    for text in ("mask_data[", "sink_data[", "alibi_slope(h)", "kv_visible(i, j)",
                 "pc.softcap * tanh"):
        assert text in full, text
    split = render(sc(sinks=True, split_k=True))
    assert "stats_data[" in split and "sink_data[" not in split.split("void main")[1]
    assert "KQ_MAX_OFFSET" in render(sc(acc=16))


def test_no_shuffles_when_nothing_is_shared_across_lanes():
    # One lane per dot and one column group per subgroup row group: no subgroup traffic.
    v = sc(wg=8, subgroup=8, d_split=1, row_split=8, br=8, bc=8)
    assert scalar.layout(v).shuffle_lanes == 1
    assert "subgroupShuffleXor(" not in render(v).split("void main")[1]


# --- device rules -----------------------------------------------------------------------------
def test_supports_needs_16bit_storage_only():
    assert scalar.supports(H100) is None and scalar.supports(LAVAPIPE) is None
    assert scalar.supports(MALI) is None
    assert "16-bit" in scalar.supports(dataclasses.replace(H100, storage_buffer_16bit=False))
    assert scalar.device_reason(sc(), H100) is None


# --- tuning space -----------------------------------------------------------------------------
@pytest.mark.parametrize("caps", DEVICES, ids=lambda c: c.name)
def test_space_is_tens_to_hundreds_and_unique(caps):
    for problem in (ProblemClass(head_k=128, head_v=128, nq_bucket=3),
                    ProblemClass(head_k=128, head_v=128, nq_bucket=0, features=("mask",)),
                    ProblemClass(head_k=576, head_v=512, k_type="q8_0", v_type="q8_0",
                                 nq_bucket=3)):
        knobs = list(scalar.candidates(problem, caps))
        assert 10 <= len(knobs) <= 400
        assert all(k["path"] is PathKind.SCALAR and not k["aligned"] for k in knobs)
        space = enumerate_space(problem, caps, paths=(PathKind.SCALAR,))
        uris = [v.uri for v in space.valid]
        assert len(uris) == len(set(uris)) >= 4, (caps.name, problem)
        assert all(why_invalid(v, caps) is None for v in space.valid)
        assert all(reason for _, reason in space.rejected)


def test_h100_typical_space_size():
    space = enumerate_space(ProblemClass(head_k=128, head_v=128, nq_bucket=3), H100,
                            paths=(PathKind.SCALAR,))
    assert len(space.valid) + len(space.rejected) == 96
    assert 50 <= len(space.valid) <= 96


def test_candidates_follow_the_device_subgroup_sizes():
    sizes = {k["subgroup"] for k in scalar.candidates(ProblemClass(head_k=64, head_v=64), INTEL)}
    assert sizes == {16, 32}  # 8 lanes: too few column groups to be worth a pipeline
    sizes = {k["subgroup"] for k in scalar.candidates(ProblemClass(head_k=64, head_v=64), MALI)}
    assert sizes == {16}


# --- defaults ---------------------------------------------------------------------------------
def test_default_matches_llamacpp_on_nvidia():
    d = scalar.default(ProblemClass(head_k=128, head_v=128, nq_bucket=3), H100)
    assert (d.br, d.bc, d.wg, d.d_split, d.row_split, d.schedule) == (16, 32, 128, 8, 4, "stage")
    d = scalar.default(ProblemClass(head_k=128, head_v=128, nq_bucket=0), H100)
    assert (d.br, d.bc, d.row_split, d.schedule) == (1, 64, 1, "base")  # one row: no reuse
    d = scalar.default(ProblemClass(head_k=40, head_v=40, nq_bucket=3), H100)
    assert (d.d_split, d.bc) == (2, 64)              # 40 = 8 * 5: two lanes, Bc 64
    d = scalar.default(ProblemClass(head_k=256, head_v=256, nq_bucket=3), H100)
    assert d.schedule == "base"                      # staging only below 256


def test_default_keeps_the_unrolled_tile_small_on_cpu_drivers():
    # lavapipe's LLVM: 64 vec4s compile in seconds, 2176 ran out of memory (see scalar.py).
    for (hk, hv), nq in itertools.product(HEAD_PAIRS, range(5)):
        v = scalar.default(ProblemClass(head_k=hk, head_v=hv, nq_bucket=nq), LAVAPIPE)
        assert scalar.layout(v).tile_work <= scalar.CPU_TILE_WORK, v.uri
        assert scalar.layout(v).rows_per_thread == 1, v.uri


def test_default_shrinks_to_fit_small_shared_memory():
    problem = ProblemClass(head_k=576, head_v=512, nq_bucket=3)
    assert scalar.default(problem, H100).br == 16
    small = scalar.default(problem, AMD_32K)
    assert small.br < 16 and scalar.layout(small).shared_bytes <= AMD_32K.max_shared_memory


@pytest.mark.parametrize("caps", DEVICES, ids=lambda c: c.name)
def test_default_is_runnable_everywhere(caps):
    acc = (32, 16) if caps.shader_float16 else (32,)
    for (hk, hv), nq, a in itertools.product(HEAD_PAIRS, range(5), acc):
        problem = ProblemClass(head_k=hk, head_v=hv, k_type="q4_0", acc=a, nq_bucket=nq,
                               features=("mask", "causal"))
        v = scalar.default(problem, caps)
        assert why_invalid(v, caps) is None, (caps.name, v.uri, why_invalid(v, caps))
        assert (v.head_k, v.head_v, v.acc, v.mask, v.causal) == (hk, hv, a, True, True)


# --- compile ----------------------------------------------------------------------------------
def _representative() -> list[Variant]:
    out = []
    for (hk, hv), t, acc in zip(HEAD_PAIRS, itertools.cycle(KV_TYPES), itertools.cycle((32, 16))):
        nq = (hk // 8) % 5
        out.append(scalar.default(ProblemClass(head_k=hk, head_v=hv, k_type=t, v_type=t, acc=acc,
                                               nq_bucket=nq), H100))
    out.append(scalar.default(ProblemClass(head_k=72, head_v=72, k_type="iq4_nl", v_type="bf16",
                                           features=FEATURES, nq_bucket=0), LAVAPIPE))
    out.append(sc(mask=True, causal=True, alibi=True, softcap=True, sinks=True, aligned=True,
                  schedule="stage"))
    out.append(sc(br=1, bc=64, row_split=1, acc=16, k_type="q5_1", v_type="q4_0", split_k=True,
                  sinks=True, mask=True))
    out.append(sc(wg=8, subgroup=8, d_split=1, row_split=8, br=8, bc=8, k_type="f32", v_type="f32"))
    return out


_FLOAT16_CAPABILITY = 9  # SPIR-V Capability Float16 (shaderFloat16)


def _capabilities(blob: bytes) -> set[int]:
    words = struct.unpack(f"<{len(blob) // 4}I", blob)
    caps, i = set(), 5
    while i < len(words):
        count, opcode = words[i] >> 16, words[i] & 0xFFFF
        if opcode == 17:  # OpCapability
            caps.add(words[i + 1])
        i += max(count, 1)
    return caps


def test_representative_variants_compile(tmp_path):
    from kgen.compile import SpirvCache, compile_many
    variants = _representative()
    try:
        results = compile_many(variants, jobs=2, cache=SpirvCache(tmp_path))
    except ToolchainError as exc:
        pytest.fail(f"no GLSL compiler: {exc} (scripts/bootstrap.sh installs one)")
    errors = {uri: r for uri, r in results.items() if isinstance(r, Exception)}
    assert not errors, "\n\n".join(str(e) for e in errors.values())
    for v in variants:
        # acc 32 runs without shaderFloat16: 16-bit values are only loaded and widened.
        has_f16 = _FLOAT16_CAPABILITY in _capabilities(results[v.uri].spirv)
        assert has_f16 == (v.acc == 16), v.uri
