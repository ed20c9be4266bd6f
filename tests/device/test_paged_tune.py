"""Tuning a paged class (kgen.tune.paged) on the device: a winner stored under the class with
its page size, taken by kgen.paged_plan for calls of the class and by nothing dense."""
from __future__ import annotations

import numpy as np

import kgen
from kgen import reference
from kgen.cli import main
from kgen.identity import BuildIdentity, DeviceIdentity
from kgen.planning import dispatch
from kgen.planning.probe import open_for_kernels
from kgen.tune import Limits, tune
from kgen.tune.paged import PagedBatch, random_call
from kgen.tunedb import TuningDB, open_default

BATCH = PagedBatch(batch=4, heads_q=8, heads_kv=2, n_q=1, n_kv=300, head_k=64, head_v=64, block_size=16,
                   k_type="q8_0", v_type="f16", causal=True, sinks=True)


def test_a_tuned_paged_class_serves_paged_calls_only(tmp_path, monkeypatch):
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "db.sqlite"))
    with open_default() as db:
        result = tune(BATCH, db, limits=Limits(max_evals=2, runs=3))
    assert result.problem.page == 16 and "pg16" in result.problem.key
    assert result.winner is not None and result.winner.candidate.variant.page == 16
    assert len([o for o in result.outcomes if o.status == "ok"]) == 2
    caps = open_for_kernels(None).caps
    with TuningDB(tmp_path / "db.sqlite") as db:
        stored = [w for _, _, w in db.winners(DeviceIdentity.of(caps), BuildIdentity.current())]
    assert [w.problem for w in stored] == [result.problem] and stored[0].splits == 1

    # A call of the class (other lengths, a shared prefix) runs the winner, right.
    call = random_call(BATCH, [1, 1, 1, 1], [300, 17, 0, 290], np.random.default_rng(1), share=True)
    with kgen.paged_plan(call.q, call.k, call.v, block_table=call.table, seq_lens=call.seq_lens,
                         cu_seqlens_q=call.cu, causal=True, sinks=call.sinks) as p:
        assert p.how.startswith("tuned, exact class") and "pg16" in p.how
        assert p.variant.replace(split_k=False) == result.winner.candidate.variant
        out = call.run(p)
    want = reference.paged_attention(call.q, call.k, call.v, call.table, call.seq_lens, call.cu, causal=True,
                                     sinks=call.sinks)
    assert np.isfinite(out).all() and reference.nmse(out, want) <= 5e-4

    # The dense class of the same heads has no decision: a paged one never serves it.
    dense = BATCH.folded().problem()
    assert dense.page == 0 and dispatch.lookup(caps, dense) is None


def test_kgen_tune_takes_a_paged_shape(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "cli.sqlite"))
    assert main(["tune", "--shape", "2,4,1,2,100,32,32,f16,causal+page=32", "--max-evals", "1", "--runs", "3"]) == 0
    assert "pg32" in capsys.readouterr().out
    assert main(["tune", "--shape", "2,4,1,2,100,32,32,f16,page=24"]) == 2
    assert "page=24: must be a multiple of 16" in capsys.readouterr().err
