"""The regs schedule's split_sync knob: subgroups count their arrivals in shared memory and wait
only for the tile they read next, instead of two workgroup barriers per tile.

The rules, the layout, the tuner's offer and the rendered code are checked everywhere; the
kernels run where coopmat1 exists with a probed scheme on an NVIDIA device (the H100 in the GPU
verification); elsewhere forcing one fails before any submission.
"""
import dataclasses
import re

import pytest

import kgen
from kgen.errors import InvalidVariant, KgenError
from kgen.paths import coopmat1
from kgen.problem import ProblemClass
from kgen.profiles import H100
from kgen.render import render
from kgen.space import why_invalid
from kgen.variant import Schedule, Variant

from test_attention import check, run_plan
from test_reg_softmax import BASE, case_variant, scheme_on_device
SCHEMES = (1, 2)


@pytest.mark.parametrize("sync", SCHEMES)
def test_uri_round_trip(sync):
    v = Variant(**BASE, split_sync=sync, mask=True, split_k=True)
    assert f"_regs1_sync{sync}_" in v.uri
    assert Variant.parse(v.uri) == v
    assert "sync" not in Variant(**BASE).uri


@pytest.mark.parametrize("change, words", [
    (dict(split_sync=3), r"split_sync=3: one of \(0, 1, 2\)"),
    (dict(split_sync=1, schedule=Schedule.STAGE, frag_scheme=0),
     "replaces the barriers of the regs schedule .* not of schedule=stage"),
    (dict(split_sync=1, br=128), "one row tile per subgroup"),
    (dict(split_sync=2, head_k=576, head_v=512, br=64, bc=32, wg=256, schedule=Schedule.OSPLIT,
          v_in_k=True), "not of schedule=osplit"),
])
def test_rules_name_the_limit(change, words):
    with pytest.raises(InvalidVariant, match=words):
        Variant(**dict(BASE, **change))


def test_other_paths_reject_the_knob():
    with pytest.raises(InvalidVariant, match="split_sync"):
        Variant(path="scalar", head_k=128, head_v=128, k_type="f16", v_type="f16", br=8, bc=32,
                wg=128, d_split=4, row_split=1, split_sync=1)


def test_only_nvidia_devices_run_it():
    v = Variant(**BASE, split_sync=1)
    assert why_invalid(v, H100) is None
    amd = dataclasses.replace(H100, vendor_id=0x1002)
    assert "forward progress" in why_invalid(v, amd) and "AMD" in why_invalid(v, amd)
    assert why_invalid(Variant(**BASE), amd) is None  # the barrier kernel is not refused


def test_layout_counts_the_counters():
    plain, synced = (coopmat1.layout(Variant(**BASE, split_sync=s)) for s in (0, 1))
    assert synced.shared_bytes == plain.shared_bytes + 4 * 4
    assert "sync_count" in {a.name for a in synced.shared}
    assert "sync_count" not in {a.name for a in plain.shared}


def test_tuner_offers_scheme_1_without_a_mask_on_nvidia_only():
    def offered(key, caps=H100):
        return {k.get("split_sync", 0) for k in coopmat1.candidates(ProblemClass.parse(key), caps)
                if k.get("frag_scheme")}
    prefill = "128/128 f16/f16 acc32 - nq3 nkv3 gqa0"
    assert offered(prefill) == {0, 1}
    assert offered("128/128 f16/f16 acc32 mask nq3 nkv3 gqa2") == {0}
    # No osplit candidate carries it (MLA prefill offers both kinds of register kernel).
    mla = ProblemClass.parse("576/512 f16/f16 acc32 mask+v_in_k nq3 nkv3 gqa4")
    assert not any(k.get("split_sync") for k in coopmat1.candidates(mla, H100)
                   if k["schedule"] is Schedule.OSPLIT)
    assert offered(prefill, dataclasses.replace(H100, vendor_id=0x1002)) == {0}


def _loop(source: str) -> str:
    """The KV loop of a rendered regs kernel, up to the epilogue."""
    start = source.index("for (uint kv0 = kv_start")
    return source[start:source.index("// ---- epilogue", start)]


@pytest.mark.parametrize("sync", SCHEMES)
def test_loop_waits_instead_of_barriers(sync):
    """Inside the loop: no barrier, and per tile each of the four events is both counted and
    waited for, with the target the arrivals of every subgroup reach."""
    loop = _loop(render(Variant(**BASE, split_sync=sync, mask=True)))
    assert "barrier()" not in loop
    for event in ("K_READY", "K_FREE", "V_READY", "V_FREE"):
        assert f"arrive({event})" in loop
        assert re.search(rf"wait_for\({event}, (\(tile \+ 1u\)|tile) \* NSG\)", loop), event
    assert _loop(render(Variant(**BASE, mask=True))).count("barrier()") == 2


def test_representative_variants_compile(tmp_path):
    from kgen.compile import SpirvCache, compile_many
    variants = [Variant(**dict(BASE, split_sync=s, **kw)) for s in SCHEMES for kw in (
        dict(mask=True, aligned=False, split_k=True, mat_n=8, bc=32),
        dict(mask=True, causal=True, alibi=True, softcap=True, sinks=True),
        dict(head_k=320, head_v=128, br=32, wg=64, bc=16, causal=True),  # Q in Qsh
    )]
    results = compile_many(variants, jobs=2, cache=SpirvCache(tmp_path))
    failures = {uri: str(r) for uri, r in results.items() if isinstance(r, Exception)}
    assert not failures, "\n\n".join(failures.values())


# (name, Hq, Hkv, Nq, Nkv, head_k, head_v, mask, causal, splits, br, bc, mat_n, row tiles); one
# row tile per subgroup, as the rules require.
CASES = [
    ("aligned", 4, 4, 128, 512, 128, 128, False, False, 1, 64, 64, 16, 1),
    ("mask-tail-gqa", 8, 2, 100, 300, 128, 128, True, False, 1, 128, 64, 8, 1),
    ("causal-split", 4, 2, 70, 260, 128, 128, False, True, 2, 32, 32, 8, 1),
    ("wide-heads-mask", 4, 2, 100, 300, 256, 128, True, False, 1, 64, 16, 16, 1),
    ("one-tile", 2, 1, 33, 40, 72, 40, True, True, 1, 32, 64, 16, 1),
]


@pytest.mark.parametrize("sync", SCHEMES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kernels_match_the_reference(case, sync):
    variant, splits, q, k, v, mask = case_variant(case, split_sync=sync)
    kw = dict(mask=mask, causal=variant.causal)
    if not scheme_on_device(dict(BASE, split_sync=1)):
        with pytest.raises(KgenError, match="coopmat1|cooperative|fragment|forward progress"):
            kgen.plan(q, k, v, variant=variant, split_k=splits, **kw)
        return
    p, out, v = run_plan(q, k, v, variant, splits, **kw)
    assert p.variant == variant and p.splits == splits
    check(out, q, k, v, **kw)
    # The counts start from zero in every call: a second call gives the same output.
    with kgen.plan(q, k, v, variant=variant, split_k=splits, **kw) as again:
        assert (again(q, k, v, mask=mask) == out).all()
