"""coopmat1's regs schedule: FlashAttention-2 in registers (S, P and O of each subgroup's rows
stay in accumulator registers; the fragment scheme says where each element lives), and the
fragment probe and analysis behind it (kgen/paths/fragments.py).

The rules and the analysis run everywhere; the kernels run where coopmat1 exists with a probed
scheme (an H100 in the GPU verification); elsewhere forcing one fails before any submission.
"""
import dataclasses
import math

import numpy as np
import pytest

import kgen
from kgen.errors import InvalidVariant, KgenError
from kgen.paths.fragments import SCHEMES, analyse, expected, scheme_reason
from kgen.caps import Fragment
from kgen.planning.probe import open_for_kernels, probe_or_warn
from kgen.paths import coopmat1
from kgen.problem import ProblemClass
from kgen.profiles import H100
from kgen.space import why_invalid
from kgen.variant import Schedule, Variant
from runtime import open_device

from test_attention import case_inputs, check, make_inputs, run_plan

BASE = dict(path="coopmat1", head_k=128, head_v=128, k_type="f16", v_type="f16", br=64, bc=64,
            wg=128, mat_m=16, mat_n=16, mat_k=16, schedule=Schedule.REGS, frag_scheme=1)


def test_uri_round_trip():
    v = Variant(**BASE, mask=True, causal=True, split_k=True)
    assert "_regs1_" in v.uri
    assert Variant.parse(v.uri) == v


@pytest.mark.parametrize("change, words", [
    (dict(k_type="q8_0"), "kv_f16"),
    (dict(acc=16), "acc=32"),
    (dict(br=32), "subgroups \\* mat_m"),
    (dict(br=48, wg=64), "subgroups \\* mat_m"),
    (dict(head_k=512, head_v=512, bc=16), "head_v at most 256"),
    (dict(head_k=256, head_v=256, br=128, bc=16), "row tiles \\* head_v at most 256"),
    (dict(bc=128, wg=64, br=32), "at most 16"),
    (dict(frag_scheme=7), "no such fragment scheme"),
    (dict(mat_m=16, mat_n=16, mat_k=8, bc=32), "defined for shapes"),
])
def test_rules_name_the_limit(change, words):
    with pytest.raises(InvalidVariant, match=words):
        Variant(**dict(BASE, **change))


def test_other_paths_reject_the_schedule():
    with pytest.raises(InvalidVariant, match="schedule=regs"):
        Variant(path="coopmat2", head_k=128, head_v=128, k_type="f16", v_type="f16", br=32, bc=32,
                wg=128, schedule=Schedule.REGS, frag_scheme=1)
    with pytest.raises(InvalidVariant, match="schedule=regs"):
        Variant(path="scalar", head_k=128, head_v=128, k_type="f16", v_type="f16", br=8, bc=32,
                wg=128, d_split=4, row_split=1, schedule=Schedule.REGS, frag_scheme=1)


def test_layout_keeps_q_in_registers_for_small_heads_only():
    small = coopmat1.layout(Variant(**BASE))
    assert small.q_regs and {a.name for a in small.shared} == {"Ksh", "Vsh"}
    # 64 keys x 128 halves = 1024 16-byte elements of K over 128 threads.
    assert (small.k_step, small.v_step, small.staged) == (8, 8, 8)
    assert small.shared_bytes == 2 * 64 * 136 * 2
    # Two row tiles of 16 x 128: 16 Q operands per lane, still in registers.
    assert coopmat1.layout(Variant(**dict(BASE, br=128))).q_regs
    wide = coopmat1.layout(Variant(**dict(BASE, head_k=320, br=32, wg=64, bc=16)))
    assert not wide.q_regs and "Qsh" in {a.name for a in wide.shared}
    assert wide.shared_bytes <= H100.max_shared_memory


def test_h100_profile_matches_scheme_1():
    """The profile holds what the probe read on the H100; scheme 1 is that layout."""
    for shape in ((16, 16, 16), (16, 8, 16), (16, 8, 8)):
        assert scheme_reason(1, *shape, H100.coopmat1_fragments, 32) is None
    assert why_invalid(Variant(**BASE), H100) is None


def test_device_without_probe_or_with_another_layout_is_refused():
    unprobed = dataclasses.replace(H100, coopmat1_fragments=())
    assert "not known" in why_invalid(Variant(**BASE), unprobed)
    # Swap two lanes' accumulator elements: no longer scheme 1.
    acc, a = expected(SCHEMES[1], 16, 16, 16)
    rows = list(acc.rows)
    rows[0], rows[4] = rows[4], rows[0]
    other = dataclasses.replace(H100, coopmat1_fragments=(dataclasses.replace(acc, rows=tuple(rows)), a))
    assert "are not NVIDIA" in why_invalid(Variant(**BASE), other)


def test_analysis_of_scheme_1():
    lay = analyse(*expected(SCHEMES[1], 16, 8, 16))
    assert (lay.acc_len, lay.a_len, lay.slots, lay.row_xor) == (4, 8, 2, (1, 2))
    # A 16x16 operand spans two 16x8 S tiles: elements alternate between them in pairs.
    assert lay.a_from == ((0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3))


def _amd_like_acc() -> Fragment:
    """An accumulator where lane L holds column L % 16 of rows 2i + L // 16 (AMD-like)."""
    rows = tuple(tuple(2 * i + lane // 16 for i in range(8)) for lane in range(32))
    cols = tuple(tuple(lane % 16 for _ in range(8)) for lane in range(32))
    return Fragment(16, 16, 16, "acc", rows, cols)


def test_analysis_refuses_what_registers_cannot_do():
    acc = _amd_like_acc()
    # An A operand whose lane L holds all of row L % 16.
    a = Fragment(16, 16, 16, "a", tuple(tuple(lane % 16 for _ in range(16)) for lane in range(32)),
                 tuple(tuple(range(16)) for _ in range(32)))
    # The rows reduce over 16 lanes (xor 1..8), but P's A operand holds whole rows per lane.
    with pytest.raises(ValueError, match="in no S element of that lane"):
        analyse(acc, a)
    # A lane pairing that no xor tree reaches: lanes 0 and 5 share rows, 0 and 1 do not.
    s1, s1a = expected(SCHEMES[1], 16, 16, 16)
    perm = [0, 2, 4, 6, 1, 3, 5, 7] + list(range(8, 32))
    rows = tuple(s1.rows[perm.index(q)] if q < 8 else s1.rows[q] for q in range(32))
    cols = tuple(s1.cols[perm.index(q)] if q < 8 else s1.cols[q] for q in range(32))
    with pytest.raises(ValueError, match="shuffle tree"):
        analyse(Fragment(16, 16, 16, "acc", rows, cols), s1a)


def test_h100_candidates_offer_regs_for_prefill():
    prefill = ProblemClass.parse("128/128 f16/f16 acc32 - nq3 nkv3 gqa0")
    regs = [Variant(**k) for k in coopmat1.candidates(prefill, H100)
            if k["schedule"] is Schedule.REGS and _valid(k)]
    fit = [v for v in regs if why_invalid(v, H100) is None]
    assert {v.br for v in fit} >= {32, 64, 128} and {v.bc for v in fit} >= {16, 32, 64}
    assert all(v.br == v.wg // 32 * v.mat_m for v in fit)  # one row tile per subgroup
    unprobed = dataclasses.replace(H100, coopmat1_fragments=())
    assert not any(k.get("frag_scheme") for k in coopmat1.candidates(prefill, unprobed))
    acc16 = ProblemClass.parse("128/128 f16/f16 acc16 - nq3 nkv3 gqa0")
    assert not any(k.get("frag_scheme") for k in coopmat1.candidates(acc16, H100))


def _valid(knobs: dict) -> bool:
    try:
        Variant(**knobs)
    except InvalidVariant as exc:
        assert "at most 16" in str(exc)  # only the register budget rules some out
        return False
    return True


def test_probed_fragments_cover_every_element_once():
    """On a device with coopmat1 the probe ran when it was opened for kernels: each matrix's
    elements are held exactly once over the lanes. Without coopmat1 nothing is probed."""
    caps = open_for_kernels(None).caps
    if coopmat1.supports(caps) is not None:
        assert caps.coopmat1_fragments == ()
        return
    assert {f.use for f in caps.coopmat1_fragments} == {"acc", "a"}
    for f in caps.coopmat1_fragments:
        width = f.n if f.use == "acc" else f.k
        held = sorted((r, c) for lane_r, lane_c in zip(f.rows, f.cols) for r, c in zip(lane_r, lane_c))
        assert set(held) == {(r, c) for r in range(f.m) for c in range(width)}


def test_a_failed_probe_warns_and_leaves_the_layout_unknown():
    class Broken:
        caps = H100

        def pipeline(self, *args, **kwargs):
            raise KgenError("driver said no")

    with pytest.warns(RuntimeWarning, match="driver said no.*regs and osplit variants are unavailable"):
        assert probe_or_warn(Broken()) == ()


REPRESENTATIVE = (
    dict(mask=True),
    dict(mask=True, aligned=False, split_k=True, mat_n=8, bc=32),
    dict(mask=True, causal=True, alibi=True, softcap=True, sinks=True, aligned=False),
    dict(causal=True, sinks=True, split_k=True, head_k=72, head_v=40, br=32, bc=16, wg=64),
    dict(mask=True, alibi=True, head_k=320, bc=16, br=32, wg=64),
)


def test_representative_variants_compile(tmp_path):
    from kgen.compile import SpirvCache, compile_many
    variants = [Variant(**dict(BASE, **kw)) for kw in REPRESENTATIVE]
    results = compile_many(variants, jobs=2, cache=SpirvCache(tmp_path))
    failures = {uri: str(r) for uri, r in results.items() if isinstance(r, Exception)}
    assert not failures, "\n\n".join(failures.values())


def _fragment_ordered(mask: np.ndarray, f, n: int, bc: int, tiles: int) -> np.ndarray:
    """numpy model of templates/mask_frag.comp.j2: [plane][row tile][chunk][lane][8 halves]."""
    b, h, rows, n_kv = mask.shape
    planes = mask.reshape(b * h, rows, n_kv)
    row_tiles, chunks = -(-rows // 16), -(-n_kv // bc) * (bc // 16)
    out = np.zeros((b * h, row_tiles, chunks, len(f.rows), 8), np.float16)
    for p, rt, ch, lane, k in np.ndindex(out.shape):
        g, i = divmod(k, f.acc_len)
        row = 0 if rows == 1 else rt * 16 + f.rows[lane][f.slot_of[i]]
        col = ch * 16 + g * n + f.cols[lane][i]
        if row < rows and col < n_kv:
            out[p, rt, ch, lane, k] = planes[p, row, col]
    return out


def run_pass(source: str, name: str, inputs: dict, out_bytes: int, push: bytes, groups, read: int) -> bytes:
    """Compile and run one pass before a kernel on the default device: `inputs` maps binding
    names to arrays, the `out` buffer of `out_bytes` starts as 0xFF bytes (whatever the pass
    leaves out reads as NaN); returns its first `read` bytes."""
    from kgen import abi
    from kgen.compile import compile_source
    dev = open_device(None)
    bufs = {}
    try:
        for binding, array in inputs.items():
            bufs[binding] = dev.buffer(array.nbytes)
            bufs[binding].write(array.tobytes())
        bufs["out"] = out = dev.buffer(out_bytes)
        out.write(bytes([0xFF]) * out_bytes)
        kernel = dev.pipeline(compile_source(source, name=name).spirv, name=name)
        kernel({abi.BINDING[b]: buf for b, buf in bufs.items()}, push, groups)
        return out.read(read)
    finally:
        for buf in bufs.values():
            dev.forget(buf)


@pytest.mark.parametrize("mat_n, bc, shape, pad", [
    (8, 32, (1, 1, 37, 70), 0),      # per-row mask, rows and columns past a tile
    (16, 16, (2, 3, 20, 33), 0),     # planes by batch and head
    (8, 64, (2, 1, 1, 50), 0),       # one row for every query
    (16, 16, (2, 3, 20, 33), 15),    # rows padded (an engine's row stride): the junk is never read
])
def test_fragment_ordered_mask_pass(mat_n, bc, shape, pad):
    """The pass that puts the mask in the lanes' order runs everywhere (no coopmat in it):
    its output against the numpy model built from the scheme's tables."""
    from kgen import abi
    from kgen.paths.fragments import mask_frag_tiles, reg_layout
    from kgen.render import MASK_FRAG_WG, mask_frag_groups, render_mask_frag
    from kgen.passes import uses_frag_mask
    v = Variant(**dict(BASE, mat_n=mat_n, bc=bc, mask=True, aligned=False))
    tiles = mask_frag_tiles(1, 16, mat_n, 16)
    assert tiles * mat_n == 16 and coopmat1.layout(v).mask_frag == tiles
    assert uses_frag_mask(v) and not uses_frag_mask(dataclasses.replace(v, mask=False))
    rng = np.random.default_rng(sum(shape))
    mask = rng.uniform(-3, 0, shape).astype(np.float16)
    mask[..., ::7] = -np.inf
    b, h, rows, n_kv = shape
    groups = mask_frag_groups(shape, bc)
    row = n_kv + pad
    stored = np.concatenate([mask, np.full((b, h, rows, pad), np.nan, np.float16)], axis=-1)
    push = abi.pack_some(n_q=rows, n_kv=n_kv, n_head_q=h, mask_stride_row=row if rows > 1 else 0,
                         mask_stride_head=rows * row if h > 1 else 0,
                         mask_stride_batch=h * rows * row if b > 1 else 0)
    want = _fragment_ordered(mask, reg_layout(1, 16, mat_n, 16), mat_n, bc, tiles)
    got = run_pass(render_mask_frag(v), "mask_frag", {"mask": stored}, 16 * MASK_FRAG_WG * math.prod(groups),
                   push, groups, want.nbytes)
    np.testing.assert_array_equal(np.frombuffer(got, np.float16).reshape(want.shape), want)


def scheme_on_device(knobs: dict = BASE) -> bool:
    """Whether the default device, opened for kernels (fragment layout probed), runs Variant(**knobs)."""
    from kgen.planning.probe import open_for_kernels
    caps = open_for_kernels(None).caps
    return coopmat1.supports(caps) is None and why_invalid(Variant(**knobs), caps) is None


# (name, Hq, Hkv, Nq, Nkv, head_k, head_v, mask, causal, splits, br, bc, mat_n, row tiles)
CASES = [
    ("prefill-aligned", 4, 4, 128, 512, 128, 128, False, False, 1, 64, 64, 16, 1),
    ("prefill-tail-mask-gqa", 8, 2, 100, 300, 128, 128, True, False, 1, 64, 32, 16, 1),
    ("causal-split-n8", 4, 2, 70, 260, 128, 128, False, True, 2, 32, 32, 8, 1),
    ("wide-k-q-in-shared", 2, 1, 40, 200, 320, 128, True, False, 1, 32, 16, 16, 1),
    ("two-row-tiles-mask-tail", 4, 2, 100, 300, 128, 128, True, False, 1, 128, 32, 16, 2),
    ("two-row-tiles-causal-split", 4, 4, 64, 200, 256, 128, False, True, 2, 64, 16, 8, 2),
    ("odd-heads", 2, 1, 33, 90, 72, 40, True, True, 1, 32, 16, 16, 1),
]


def case_variant(case, **knobs):
    """A CASES row (also tests/device/test_split_sync.py's) as (variant, splits, q, k, v, mask): BASE
    with the row's heads, tiles and features, plus `knobs`."""
    name, hq, hkv, nq, nkv, dk, dv, use_mask, causal, splits, br, bc, mat_n, row_tiles = case
    q, k, v, mask = case_inputs(name, 1, hq, hkv, nq, nkv, dk, dv, use_mask)
    wg = br // (16 * row_tiles) * 32
    variant = Variant(**dict(BASE, head_k=dk, head_v=dv, br=br, bc=bc, wg=wg, mat_n=mat_n,
                             mask=use_mask, causal=causal, split_k=splits > 1,
                             aligned=nkv % bc == 0, **knobs))
    return variant, splits, q, k, v, mask


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_regs_kernels_match_the_reference(case):
    variant, splits, q, k, v, mask = case_variant(case)
    kw = dict(mask=mask, causal=variant.causal)
    if not scheme_on_device():
        with pytest.raises(KgenError, match="coopmat1|cooperative|fragment"):
            kgen.plan(q, k, v, variant=variant, split_k=splits, **kw)
        return
    p, out, v = run_plan(q, k, v, variant, splits, **kw)
    assert p.variant == variant and p.splits == splits
    check(out, q, k, v, **kw)


@pytest.mark.parametrize("splits", [1, 2])
def test_regs_score_modifiers_match_the_reference(splits):
    """Softcap, ALiBi and sinks over a mask with -inf runs: the log2-unit scores, the folded
    slope and the natural-log (m, l) that split-k hands the reduce."""
    rng = np.random.default_rng(7 + splits)
    hq, hkv, nq, nkv = 4, 2, 50, 256
    q, k, v = make_inputs(rng, 1, hq, hkv, nq, nkv, 128, 128)
    mask = rng.uniform(-2.0, 0.0, (nq, nkv)).astype(np.float32)
    mask[:, 64:130] = -np.inf
    sinks = rng.standard_normal(hq).astype(np.float32)
    kw = dict(mask=mask, softcap=3.0, alibi_max_bias=8.0, sinks=sinks)
    variant = Variant(**dict(BASE, bc=32, mask=True, alibi=True, softcap=True, sinks=True,
                             split_k=splits > 1, aligned=True))
    if not scheme_on_device():
        with pytest.raises(KgenError, match="coopmat1|cooperative|fragment"):
            kgen.plan(q, k, v, variant=variant, split_k=splits, **kw)
        return
    with kgen.plan(q, k, v, variant=variant, split_k=splits, **kw) as p:
        assert p.variant == variant and p.splits == splits
        out = p(q, k, v, mask=mask, sinks=sinks)
    check(out, q, k, v, **kw)
