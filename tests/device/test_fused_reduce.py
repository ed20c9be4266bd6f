"""fused_reduce: split-k without the reduce pass. Each workgroup counts its arrival for its row
tile and the last of the tile's splits combines every split's partial rows. Rules, the tuner's
offer and the plan's shape run anywhere; the kernels run on every device (scalar on lavapipe in
CI, coopmat2 where the device has it) against the float64 reference, through what
the combine can get wrong: splits that saw nothing (a masked range), more splits than one round
of loads, sinks, a second row tile with fewer rows, and a second call on the same plan (the
arrival counts must be back at zero)."""
import numpy as np
import pytest

import kgen
from kgen.errors import InvalidVariant, KgenError
from kgen.profiles import H100
from kgen.paths.shared import FUSED_STATS_SLOTS
from kgen.render import fused_reduce_lanes
from kgen.tools.suites import P1, P3
from kgen.tune.candidates import FUSED_MAX_LOADS, candidates, fused_reduce_fits
from kgen.variant import Variant

from test_attention import case_inputs, check

SCALAR = dict(path="scalar", head_k=64, head_v=64, k_type="f16", v_type="f16", br=4, bc=16, wg=32,
              subgroup=8, d_split=8, row_split=1)


def test_rules_and_uri():
    v = Variant(**SCALAR, mask=True, split_k=True, fused_reduce=True)
    assert "_fusedred_" in v.uri and Variant.parse(v.uri) == v
    with pytest.raises(InvalidVariant, match="needs the split_k feature"):
        Variant(**SCALAR, fused_reduce=True)
    # coopmat1 wrote wrong partial rows on the H100 with the combine compiled in: refused.
    with pytest.raises(InvalidVariant, match="not on the coopmat1 path"):
        Variant(path="coopmat1", head_k=128, head_v=128, k_type="f16", v_type="f16", br=16, bc=32,
                wg=64, schedule="stage", mat_m=16, mat_n=16, mat_k=16, split_k=True, fused_reduce=True)


def test_stats_table_counts_as_shared_memory_and_bounds_the_splits():
    from kgen.paths import scalar
    from kgen.runtime import open_device
    sg = open_device().caps.subgroup_size
    v = Variant(**dict(SCALAR, subgroup=sg, wg=4 * sg, bc=max(16, 4 * sg // 8)), split_k=True)
    fused = v.replace(fused_reduce=True)
    assert scalar.layout(fused).shared_bytes - scalar.layout(v).shared_bytes == 8 * FUSED_STATS_SLOTS + 4
    q, k, vv, _ = case_inputs("limit", 1, 2, 2, 4, 6400, 64, 64, False)   # 100 splits of 64 keys
    with pytest.raises(ValueError, match=rf"split_k=100: .* at most {FUSED_STATS_SLOTS} .* 4 rows x 100 splits"):
        kgen.plan(q, k, vv, variant=fused.replace(aligned=False), split_k=100)


def test_a_tuned_fused_decision_that_cannot_serve_a_call_falls_back(tmp_path, monkeypatch):
    """A class spans Nq 2-8: a fused winner tuned with 100 splits on 2 rows (200 pairs) cannot
    combine 8 rows' (400 pairs). A call of 8 rows runs the heuristic default instead of raising."""
    from kgen.identity import BuildIdentity, DeviceIdentity, kernel_digest
    from kgen.runtime import open_device
    from kgen.tunedb import TuningDB, Winner
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "fused.sqlite"))
    caps = open_device().caps
    sg = caps.subgroup_size
    fused = Variant(**dict(SCALAR, subgroup=sg, wg=4 * sg, bc=max(16, 4 * sg // 8)), split_k=True,
                    fused_reduce=True, aligned=True)
    q2, k, v, _ = case_inputs("fits", 1, 2, 2, 2, 6400, 64, 64, False)
    with kgen.plan(q2, k, v, variant=fused, split_k=100) as tuned_on:
        problem, splits = tuned_on.kernel_shapes.problem(), tuned_on.splits
    assert splits == 100
    db = TuningDB(tmp_path / "fused.sqlite")
    db.set_winner(DeviceIdentity.of(caps), BuildIdentity.current(),
                  Winner(problem=problem, variant=fused.uri, splits=100, median_us=1.0, spread_us=0.0,
                         kernel=kernel_digest(fused.uri)))
    db.close()
    with kgen.plan(q2, k, v) as p:
        assert p.how.startswith("tuned, exact") and p.variant.fused_reduce
    q8, _, _, _ = case_inputs("wider", 1, 2, 2, 8, 6400, 64, 64, False)
    with kgen.plan(q8, k, v) as p:
        assert p.kernel_shapes.problem() == problem
        assert p.how == "heuristic default"
        check(p(q8, k, v), q8, k, v)


def test_lanes_share_outputs_only_when_the_tile_has_few():
    wide = Variant(**dict(SCALAR, head_v=128, bc=64, wg=256, subgroup=32), split_k=True, fused_reduce=True)
    assert fused_reduce_lanes(wide) == 2          # 4 rows x 32 vec4 outputs on 256 threads
    assert fused_reduce_lanes(wide.replace(head_v=64)) == 4
    assert fused_reduce_lanes(wide.replace(head_v=32, br=1, bc=32, d_split=8)) == 16   # at most a lane group of 16
    assert fused_reduce_lanes(wide.replace(head_v=32, br=1, bc=32, d_split=8, subgroup=8)) == 8
    assert fused_reduce_lanes(wide.replace(br=16, wg=64, bc=16, d_split=4)) == 1


def test_tuner_offers_it_where_one_workgroup_reads_little():
    cands, _ = candidates(P3.shapes(), H100)
    fused = [c for c in cands if c.variant.fused_reduce]
    assert fused and all(c.splits > 1 for c in fused)
    assert {c.variant.path.value for c in fused} == {"scalar", "coopmat2"}
    # P3 folds GQA 4 into 4 rows: each fused candidate reads at most FUSED_MAX_LOADS per thread.
    assert all(c.splits * min(c.variant.br, 4) * 32 <= FUSED_MAX_LOADS * c.variant.wg for c in fused)
    assert all(c.splits * min(c.variant.br, 4) <= FUSED_STATS_SLOTS for c in fused)
    assert not fused_reduce_fits(fused[0].variant, 1, 4)
    assert not any(c.variant.fused_reduce for c in candidates(P1.shapes(), H100)[0] if c.splits > 4)


def _fused_plan(q, k, v, variant, splits, **kw):
    return kgen.plan(q, k, v, variant=variant, split_k=splits, **kw)


# (name, Hq, Hkv, Nq, Nkv, mask, causal, sinks, splits, knobs): lavapipe compiles each in seconds.
CASES = [
    # GQA 4 folds into 4 rows; keys 64-127 hidden too: splits 2 and 3 see nothing.
    ("gqa4-masked-split", 8, 2, 1, 280, True, False, False, 9, {}),
    # 20 splits: more than one round of loads per lane (FUSED_UNROLL x lanes).
    ("many-splits", 2, 2, 1, 315, True, False, False, 20, {}),
    # Sinks join the combine; 6 rows: the second row tile holds 2.
    ("sinks-two-tiles", 2, 2, 6, 200, True, False, True, 4, {}),
    # Causal over 5 rows: later splits are empty for the first rows.
    ("causal", 2, 1, 5, 97, False, True, False, 4, dict(bc=32, d_split=4)),
]


def _variant(knobs, subgroup, use_mask, causal, sinks, nkv):
    knobs = dict(SCALAR, subgroup=subgroup, wg=4 * subgroup, **knobs)
    return Variant(**knobs, mask=use_mask, causal=causal, sinks=sinks, split_k=True, fused_reduce=True,
                   aligned=nkv % knobs["bc"] == 0)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_scalar_kernel_matches_reference_twice(case):
    name, hq, hkv, nq, nkv, use_mask, causal, use_sinks, splits, knobs = case
    from kgen.runtime import open_device
    sg = open_device().caps.subgroup_size
    q, k, v, mask = case_inputs(name, 1, hq, hkv, nq, nkv, 64, 64, use_mask)
    if "masked-split" in name:
        mask[:, 64:128] = -np.inf
    sinks = np.random.default_rng(3).standard_normal(hq).astype(np.float32) if use_sinks else None
    variant = _variant(knobs, sg, use_mask, causal, use_sinks, nkv)
    kw = dict(mask=mask, causal=causal, sinks=sinks)
    with _fused_plan(q, k, v, variant, splits, **{n: x for n, x in kw.items() if n != "mask" or x is not None}) as p:
        assert p.splits == splits and len(p.steps) == 1   # no reduce pass
        out = p(q, k, v, mask=mask, sinks=sinks)
        check(out, q, k, v, **kw)
        # A second call with new queries: the arrival counts were reset, so it combines again.
        q2 = np.random.default_rng(11).standard_normal(q.shape).astype(np.float32)
        out2 = p(q2, k, v, mask=mask, sinks=sinks)
        check(out2, q2, k, v, **kw)
        counts = np.frombuffer(p._buffers["split_arrivals"].read(), dtype=np.uint32)
        assert not counts.any()


# coopmat2: 128/128 decode with GQA 4 and a mask, a ragged last tile.
def test_coopmat2_kernel_matches_reference():
    q, k, v, mask = case_inputs("cm2-fused", 1, 8, 2, 1, 400, 128, 128, True)
    variant = Variant(path="coopmat2", head_k=128, head_v=128, k_type="f16", v_type="f16", br=16, bc=32,
                      wg=64, mask=True, split_k=True, fused_reduce=True)
    from kgen.runtime import open_device
    if not open_device().caps.has_coopmat2:
        with pytest.raises(KgenError, match="coopmat|cooperative"):
            _fused_plan(q, k, v, variant, 7, mask=mask)
        return
    with _fused_plan(q, k, v, variant, 7, mask=mask) as p:
        assert p.splits == 7
        out = p(q, k, v, mask=mask)
        check(out, q, k, v, mask=mask)
        out2 = p(q, k, v, mask=mask)
    np.testing.assert_array_equal(out2, out)
