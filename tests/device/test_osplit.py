"""coopmat1's osplit schedule (with v_in_k): regs for V heads too wide for one subgroup's
registers (DeepSeek MLA, 576/512). O is split by columns over the subgroups, S blocks and P go
through shared memory, V is read from the K tile, and Q arrives in A-fragment order from a pass
before the kernel (templates/q_frag.comp.j2).

The rules, the class plumbing and the Q pass run everywhere; the kernels run where coopmat1
exists with a probed scheme (the H100); elsewhere forcing one fails before any submission.
"""
import dataclasses

import numpy as np
import pytest

import kgen
from kgen.planning import dispatch
from kgen.errors import InvalidVariant, KgenError
from kgen.paths.fragments import SCHEMES, expected
from kgen.identity import kernel_digest
from kgen.kvtensor import KvLayout
from kgen.paths import coopmat1
from kgen.problem import ProblemClass
from kgen.profiles import H100
from kgen.space import enumerate_space, why_invalid
from kgen.problem import mismatch
from kgen.variant import Schedule, Variant

from test_attention import case_inputs, check, make_inputs, run_plan
from test_reg_softmax import run_pass, scheme_on_device

MLA = dict(path="coopmat1", head_k=576, head_v=512, k_type="f16", v_type="f16", br=64, bc=32,
           wg=256, mat_m=16, mat_n=8, mat_k=16, schedule=Schedule.OSPLIT, frag_scheme=1, v_in_k=True)


def test_uri_round_trip_and_layout():
    v = Variant(**MLA, mask=True, split_k=True)
    assert "_regs1_osplit_vink_" in v.uri and Variant.parse(v.uri) == v
    lay = coopmat1.layout(v)
    # 32 keys x 72 16-byte elements over 256 threads; 512 O columns over 8 subgroups.
    assert (lay.staged, lay.split_cols, lay.row_tiles, lay.mask_frag) == (9, 64, 4, 2)
    assert {a.name for a in lay.shared} == {"Ksh", "Psh", "Xsh"}
    # Psh holds P, and before it the depth split's partial S blocks: 2 x 16 bytes per lane.
    assert lay.depth_parts == 2
    assert lay.shared_bytes == 32 * 584 * 2 + 8 * 32 * 16 * 2 + 2 * 64 * 4
    # One column group: no depth split, Psh holds P only.
    one = coopmat1.layout(Variant(**dict(MLA, head_k=128, head_v=64, br=32, bc=16, wg=64)))
    assert one.depth_parts == 1 and one.shared_bytes == 16 * 136 * 2 + 2 * 32 * 16 + 1 * 32 * 4
    assert why_invalid(v, H100) is None
    # 64 keys of 576 halves are 74 KB: over the H100's 48 KiB for a workgroup.
    assert "shared memory" in why_invalid(Variant(**dict(MLA, bc=64, wg=512)), H100)


@pytest.mark.parametrize("change, words", [
    (dict(v_in_k=False), "schedule=osplit needs v_in_k"),
    (dict(schedule=Schedule.REGS), "v_in_k with schedule=regs"),
    (dict(frag_scheme=0), "schedule=osplit: .* set frag_scheme"),
    (dict(wg=128), "subgroups must be"),
    (dict(br=32, bc=16, wg=64), "O is 256 f32 registers per lane, at most 128"),
    (dict(head_v=504), "multiple of subgroups \\* mat_n"),
    (dict(mat_k=8, bc=16, wg=256), "must be 16 and 16"),
    (dict(acc=16), "acc=32"),
    (dict(k_type="q8_0", v_type="q8_0"), "kv_f16"),
    (dict(head_v=640), "head sizes|head_v <= head_k"),
])
def test_rules_name_the_limit(change, words):
    with pytest.raises(InvalidVariant, match=words):
        Variant(**dict(MLA, **change))


def test_other_paths_reject_the_knobs():
    for path, extra in (("coopmat2", {}), ("scalar", dict(d_split=4, row_split=1))):
        with pytest.raises(InvalidVariant, match="v_in_k: a knob of coopmat1"):
            Variant(path=path, head_k=576, head_v=512, k_type="f16", v_type="f16", br=16, bc=32,
                    wg=128, v_in_k=True, **extra)


def test_v_in_k_is_part_of_the_class():
    key = "576/512 f16/f16 acc32 mask+v_in_k nq3 nkv3 gqa4"
    mla = ProblemClass.parse(key)
    assert mla.v_in_k and mla.features == ("mask",) and mla.key == key
    plain = dataclasses.replace(mla, v_in_k=False)
    assert plain.key == "576/512 f16/f16 acc32 mask nq3 nkv3 gqa4"
    assert ProblemClass.parse("576/512 f16/f16 acc32 v_in_k nq3 nkv3 gqa4").features == ()
    uri = Variant(**MLA, mask=True).uri
    v = Variant.parse(uri)
    assert mismatch(v, mla, 1) is None and "v_in_k" in mismatch(v, plain, 1)
    assert dispatch.usable(uri, 1, kernel_digest(uri), mla, H100) is not None
    assert dispatch.usable(uri, 1, kernel_digest(uri), plain, H100) is None


def test_shapes_carry_v_in_k_into_the_class():
    from kgen.tools.suites import P2, P4
    assert P2.problem().v_in_k and P4.problem().v_in_k
    assert "v_in_k" in P2.problem().key


def test_h100_space_offers_osplit_only_with_v_in_k():
    mla = ProblemClass.parse("576/512 f16/f16 acc32 mask+v_in_k nq3 nkv3 gqa4")
    split = [v for v in enumerate_space(mla, H100).valid if v.schedule is Schedule.OSPLIT]
    assert split and all(v.v_in_k and (v.br, v.bc, v.wg) == (64, 32, 256) for v in split)
    assert {v.mat_n for v in split} == {8, 16}
    plain = dataclasses.replace(mla, v_in_k=False)
    assert not any(v.schedule is Schedule.OSPLIT or v.v_in_k for v in enumerate_space(plain, H100).valid)


def test_v_in_k_needs_v_to_share_k_layout():
    v = Variant(**MLA)
    k = KvLayout((576, 576 * 100, 576 * 100), 0, 2 * 576 * 100)
    assert coopmat1.direct_reason(v, 100, {"k": k, "v": k}) is None
    other = KvLayout((512, 512 * 100, 512 * 100), 0, 2 * 512 * 100)
    assert "V's offset 0 and strides (512" in coopmat1.direct_reason(v, 100, {"k": k, "v": other})


REPRESENTATIVE = (
    dict(mask=True),
    dict(mat_n=16, causal=True, split_k=True),
    dict(mask=True, alibi=True, softcap=True, sinks=True, aligned=True),
    dict(head_k=128, head_v=64, br=32, bc=32, wg=128, mask=True),
)


def test_representative_variants_compile(tmp_path):
    from kgen.compile import SpirvCache, compile_many
    from kgen.compile import compile_source
    from kgen.render import render_q_frag
    variants = [Variant(**dict(MLA, **kw)) for kw in REPRESENTATIVE]
    results = compile_many(variants, jobs=2, cache=SpirvCache(tmp_path))
    failures = {uri: str(r) for uri, r in results.items() if isinstance(r, Exception)}
    assert not failures, "\n\n".join(failures.values())
    assert compile_source(render_q_frag(variants[-1]), name="q_frag").spirv


def _q_fragments(q: np.ndarray, a) -> np.ndarray:
    """numpy model of templates/q_frag.comp.j2: [b, h][row tile][depth step][lane][8 halves]."""
    b, h, n_q, d = q.shape
    tiles, steps = -(-n_q // 16), -(-d // 16)
    out = np.zeros((b, h, tiles, steps, len(a.rows), 8), np.float16)
    for bi, hi, rt, ks, lane, e in np.ndindex(out.shape):
        row, col = rt * 16 + a.rows[lane][e], ks * 16 + a.cols[lane][e]
        if row < n_q and col < d:
            out[bi, hi, rt, ks, lane, e] = q[bi, hi, row, col]
    return out


@pytest.mark.parametrize("shape, mat_n", [((1, 2, 37, 576), 8), ((2, 3, 16, 72), 16)])
def test_fragment_ordered_q_pass(shape, mat_n):
    """The pass that puts Q in the lanes' A-operand order runs everywhere (no coopmat in it):
    its output against the numpy model built from the scheme's A fragments, rows past Nq and
    columns past head_k zero."""
    from kgen import abi
    from kgen.render import q_frag_groups, render_q_frag
    b, h, n_q, d = shape
    v = Variant(**dict(MLA, head_k=d, head_v=64 if d == 72 else 512, mat_n=mat_n,
                       **({} if d == 576 else dict(br=32, bc=32, wg=128))))
    rng = np.random.default_rng(n_q)
    q = rng.standard_normal(shape).astype(np.float32)
    groups = q_frag_groups(n_q, h, b, d)
    push = abi.pack_some(n_q=n_q, n_head_q=h, q_stride_row=d, q_stride_head=n_q * d,
                         q_stride_batch=h * n_q * d)
    want = _q_fragments(q, expected(SCHEMES[1], 16, mat_n, 16)[1])
    got = run_pass(render_q_frag(v), "q_frag", {"q": q}, 16 * 32 * -(-d // 16) * groups[1] * groups[2],
                   push, groups, want.nbytes)
    np.testing.assert_array_equal(np.frombuffer(got, np.float16).reshape(want.shape), want)



# (name, Hq, Hkv, Nq, Nkv, head_k, head_v, mask, causal, splits, knobs)
CASES = [
    ("mla-mask-tail", 4, 1, 100, 300, 576, 512, True, False, 1, {}),
    ("mla-n16-causal-split", 4, 1, 70, 260, 576, 512, False, True, 2, dict(mat_n=16)),
    ("mla-aligned-gqa", 8, 2, 64, 256, 576, 512, False, False, 1, {}),
    ("small-heads-mask", 4, 2, 50, 200, 128, 64, True, False, 1, dict(br=32, bc=32, wg=128)),
    # 5 depth steps over 2 subgroups: the second part is one step short.
    ("odd-depth-split", 4, 2, 40, 128, 80, 64, True, False, 2, dict(br=32, bc=32, wg=128)),
    # One column group per row tile: no depth split, no partial sums through Psh.
    ("one-column-group", 4, 1, 40, 96, 128, 64, True, False, 1, dict(br=32, bc=16, wg=64)),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_osplit_kernels_match_the_reference(case):
    name, hq, hkv, nq, nkv, dk, dv, use_mask, causal, splits, knobs = case
    q, k, v, mask = case_inputs(name, 1, hq, hkv, nq, nkv, dk, dv, use_mask)
    variant = Variant(**dict(MLA, head_k=dk, head_v=dv, mask=use_mask, causal=causal,
                             split_k=splits > 1, **knobs))
    variant = variant.replace(aligned=nkv % variant.bc == 0)
    kw = dict(mask=mask, causal=causal)
    if not scheme_on_device(MLA):
        with pytest.raises(KgenError, match="coopmat1|cooperative|fragment"):
            run_plan(q, k, v, variant, splits, mla_type="f16", **kw)
        return
    p, out, v = run_plan(q, k, v, variant, splits, mla_type="f16", **kw)
    assert p.variant == variant and p.splits == splits
    check(out, q, k, v, **kw)


@pytest.mark.parametrize("splits", [1, 2])
def test_osplit_score_modifiers_match_the_reference(splits):
    """Softcap, ALiBi and sinks over a mask with -inf runs, with and without split-k."""
    from kgen.kvtensor import KVTensor
    rng = np.random.default_rng(11 + splits)
    hq, hkv, nq, nkv = 4, 1, 50, 256
    q, k, v = make_inputs(rng, 1, hq, hkv, nq, nkv, 576, 512)
    mask = rng.uniform(-2.0, 0.0, (nq, nkv)).astype(np.float32)
    mask[:, 64:130] = -np.inf
    sinks = rng.standard_normal(hq).astype(np.float32)
    kw = dict(mask=mask, softcap=3.0, alibi_max_bias=8.0, sinks=sinks)
    variant = Variant(**dict(MLA, mask=True, alibi=True, softcap=True, sinks=True,
                             split_k=splits > 1, aligned=True))
    k_in = KVTensor.from_array(k, "f16")
    v_in = KVTensor(k_in.data, k_in.type, k_in.shape[:3] + (512,), k_in.strides)
    if not scheme_on_device(MLA):
        with pytest.raises(KgenError, match="coopmat1|cooperative|fragment"):
            kgen.plan(q, k_in, v_in, variant=variant, split_k=splits, **kw)
        return
    with kgen.plan(q, k_in, v_in, variant=variant, split_k=splits, **kw) as p:
        out = p(q, k_in, v_in, mask=mask, sinks=sinks)
    check(out, q, k, k[..., :512], **kw)


def test_plan_refuses_v_in_k_for_a_separate_v():
    """A call whose V is its own tensor cannot run a kernel that reads V from K's tile."""
    rng = np.random.default_rng(3)
    q, k, v = make_inputs(rng, 1, 4, 1, 20, 64, 576, 512)
    words = "v_in_k reads V as the first head_v columns" if scheme_on_device(MLA) else "coopmat1|cooperative|fragment"
    with pytest.raises(KgenError, match=words):
        kgen.plan(q, k, v, variant=Variant(**MLA))
