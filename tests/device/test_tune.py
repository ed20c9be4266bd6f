"""The tuner: winner rule under noise, wrong candidates never win, budgets, resume after Ctrl-C,
the dispatcher's fallback levels, and a real (small) tune on the default device."""
import dataclasses
import random
import re
import warnings

import numpy as np
import pytest

import kgen
import kgen.tools.suites
from kgen.planning import dispatch
from kgen import reference
from kgen.shapes import fold_gqa
from kgen.cli import main
from kgen.identity import BuildIdentity, DeviceIdentity, kernel_digest
from kgen.planning.choose import choose_variant
from kgen.profiles import LAVAPIPE
from kgen.runtime import open_device
from kgen.tools.suites import Case
from kgen.tune import Limits, Outcome, candidates, run_search, tune
from kgen.tune import driver
from kgen.tunedb import TuningDB, Winner

SHAPE = Case("t", heads_kv=2, gqa=1, n_q=16, n_kv=256, head_k=64, head_v=64).shapes()


class FakeEvaluator:
    """True costs per candidate, timed with multiplicative noise; some candidates are wrong."""

    def __init__(self, costs, *, noise=0.0, seed=0, wrong=(), interrupt_after=None):
        self.costs, self.noise, self.wrong = costs, noise, set(wrong)
        self.rng = random.Random(seed)
        self.checked: list[str] = []
        self.interrupt_after = interrupt_after

    def check(self, c):
        if self.interrupt_after is not None and len(self.checked) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.checked.append(c.name)
        if c.name in self.wrong:
            return Outcome(c, "wrong", nmse=1.0, reason="NMSE 1 > 0.0005")
        return Outcome(c, "ok", nmse=1e-7)

    def time(self, c, runs):
        base = self.costs[c.name]
        return [base * (1 + self.rng.uniform(-self.noise, self.noise)) for _ in range(runs)]


@pytest.fixture(scope="module")
def space():
    cands, default = candidates(SHAPE, LAVAPIPE)
    assert len(cands) >= 6 and cands[0] == default
    return cands, default


def costs_for(cands, fast, *, tie=None):
    """The `fast` candidates cost 100 (a near-tie); the rest 200 and more."""
    costs = {c.name: 200.0 + 10 * i for i, c in enumerate(cands)}
    for c in fast:
        costs[c.name] = 100.0
    return costs


@pytest.mark.parametrize("seed", range(8))
def test_near_ties_go_to_the_default(space, seed):
    cands, default = space
    costs = costs_for(cands, [cands[3], default, cands[5]])
    winner, runner_up, _ = run_search("exhaustive", cands, default, FakeEvaluator(costs, noise=0.05, seed=seed),
                                      Limits(runs=10), seed="k")
    assert winner.candidate == default
    assert runner_up.candidate in (cands[3], cands[5])


@pytest.mark.parametrize("seed", range(8))
def test_ties_without_the_default_go_to_the_first_in_order(space, seed):
    cands, default = space
    costs = costs_for(cands, [cands[5], cands[2]])
    winner, _, _ = run_search("exhaustive", cands, default, FakeEvaluator(costs, noise=0.05, seed=seed),
                              Limits(runs=10), seed="k")
    assert winner.candidate == cands[2]


class EvenEvaluator(FakeEvaluator):
    """Timings spread evenly over cost * (1 +- noise), a noise per candidate: the same median
    and interquartile range on every call."""

    def __init__(self, costs, noises):
        super().__init__(costs)
        self.noises = noises

    def time(self, c, runs):
        noise = self.noises.get(c.name, 0.0)
        return list(self.costs[c.name] * (1 + np.linspace(-noise, noise, runs)))


def test_a_slower_median_with_a_wide_spread_is_no_tie(space):
    """The default 8% slower and noisy, so that its runs overlap the fast one's: the fast one
    wins. Seen on an H100, where a decode's pick ran 39.1 +- 1.4 us beside a 37.2 +- 0.8."""
    cands, default = space
    costs = costs_for(cands, [cands[2]])
    costs[default.name] = 108.0
    ev = EvenEvaluator(costs, {default.name: 0.10, cands[2].name: 0.01})
    winner, runner_up, outcomes = run_search("exhaustive", cands, default, ev, Limits(runs=10), seed="k")
    slow = next(o for o in outcomes if o.candidate == default)
    assert slow.median - slow.spread <= winner.median + winner.spread  # the runs overlap
    assert winner.candidate == cands[2] and runner_up.candidate == default


def test_a_clear_winner_wins_over_the_default(space):
    cands, default = space
    costs = costs_for(cands, [default])
    costs[cands[4].name] = 50.0
    for strategy in ("exhaustive", "halving"):
        winner, runner_up, _ = run_search(strategy, cands, default, FakeEvaluator(costs, noise=0.02), Limits(runs=9), seed="k")
        assert winner.candidate == cands[4], strategy
        assert runner_up.median > winner.median


def test_wrong_candidates_never_win(space):
    cands, default = space
    costs = costs_for(cands, [default])
    costs[cands[1].name] = 1.0  # fastest, but wrong
    ev = FakeEvaluator(costs, wrong=[cands[1].name])
    winner, _, outcomes = run_search("exhaustive", cands, default, ev, Limits(runs=5), seed="k")
    assert winner.candidate == default
    bad = next(o for o in outcomes if o.candidate == cands[1])
    assert bad.status == "wrong" and "NMSE" in bad.reason and bad.median is None


def test_max_evals_and_budget_limit_the_search(space):
    cands, default = space
    costs = costs_for(cands, [])
    ev = FakeEvaluator(costs)
    _, _, outcomes = run_search("random", cands, default, ev, Limits(max_evals=3, runs=3), seed="k")
    assert len(outcomes) == 3 and outcomes[0].candidate == default
    ticks = iter(range(1000))
    ev = FakeEvaluator(costs)
    _, _, outcomes = run_search("random", cands, default, ev, Limits(budget_s=2.5, runs=3), seed="k",
                                clock=lambda: next(ticks))
    assert 1 <= len(outcomes) < len(cands)
    # A seeded order: the same class samples the same candidates on every run.
    _, _, again = run_search("random", cands, default, FakeEvaluator(costs), Limits(max_evals=3, runs=3), seed="k")
    assert [o.candidate for o in again] == [o.candidate for o in run_search(
        "random", cands, default, FakeEvaluator(costs), Limits(max_evals=3, runs=3), seed="k")[2]]


def test_limits_reject_bad_values():
    with pytest.raises(ValueError, match="budget"):
        Limits(budget_s=0)
    with pytest.raises(ValueError, match="max_evals"):
        Limits(max_evals=0)
    with pytest.raises(ValueError, match="runs"):
        Limits(runs=1)


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "t.sqlite"))
    with TuningDB(tmp_path / "t.sqlite") as handle:
        yield handle


def test_interrupted_tune_keeps_measurements_and_resumes(db, monkeypatch):
    cands, default = candidates(SHAPE, open_device(None).caps)
    costs = costs_for(cands, [])
    costs[cands[2].name] = 10.0
    made = []

    def fake(timed, *, device=None, seed=0, interrupt_after=None):
        made.append(FakeEvaluator(costs, interrupt_after=interrupt_after))
        return made[-1]

    monkeypatch.setattr(driver, "GpuEvaluator", lambda timed, **kw: fake(timed, interrupt_after=4, **kw))
    first = tune(SHAPE, db, strategy="exhaustive", limits=Limits(runs=3))
    assert first.interrupted and first.winner is None and len(first.outcomes) == 4
    ident, build = DeviceIdentity.of(open_device(None).caps), BuildIdentity.current()
    assert len(db.measurements(ident, build, SHAPE.problem())) == 4
    assert db.winner(ident, build, SHAPE.problem()) is None

    monkeypatch.setattr(driver, "GpuEvaluator", lambda timed, **kw: fake(timed, **kw))
    second = tune(SHAPE, db, strategy="exhaustive", limits=Limits(runs=3))
    assert second.resumed == 4 and not second.interrupted
    assert set(made[-1].checked).isdisjoint(made[0].checked)  # resumed, not re-checked
    assert len(made[-1].checked) == len(cands) - 4
    assert second.winner.candidate == cands[2]
    stored = db.winner(ident, build, SHAPE.problem())
    assert (stored.variant, stored.splits) == (cands[2].variant.uri, cands[2].splits)


def test_a_rerun_after_a_template_edit_times_only_the_kernels_it_changed(db, monkeypatch):
    """Stored timings stand while their kernel renders to the digest they were timed with."""
    cands, default = candidates(SHAPE, open_device(None).caps)
    made = []

    def fake(timed, **kw):
        made.append(FakeEvaluator(costs_for(cands, [])))
        return made[-1]

    monkeypatch.setattr(driver, "GpuEvaluator", fake)
    first = tune(SHAPE, db, strategy="exhaustive", limits=Limits(runs=3))
    assert len(made[0].checked) == len(cands) and first.winner is not None
    ident, build = DeviceIdentity.of(open_device(None).caps), BuildIdentity.current()
    stored = db.measurements(ident, build, SHAPE.problem())
    assert all(m.kernel == kernel_digest(m.variant) != "" for m in stored)
    assert db.winner(ident, build, SHAPE.problem()).kernel == kernel_digest(first.winner.candidate.variant.uri)

    edited = cands[1].variant.uri   # the edit changes this kernel's source only
    monkeypatch.setattr(driver, "kernel_digest", lambda uri: "e" * 16 if uri == edited else kernel_digest(uri))
    monkeypatch.setattr(driver, "is_current", lambda uri, k: k == driver.kernel_digest(uri))
    second = tune(SHAPE, db, strategy="exhaustive", limits=Limits(runs=3))
    assert second.resumed == len(cands) - sum(c.variant.uri == edited for c in cands)
    assert {name.partition("@")[0] for name in made[1].checked} == {edited}
    assert {m.kernel for m in db.measurements(ident, build, SHAPE.problem()) if m.variant == edited} == {"e" * 16}


def test_a_budgeted_rerun_after_a_template_edit_times_the_edited_winners_first(db, monkeypatch):
    """Timings of kernels changed since order the rerun: those candidates come right after the
    default, fastest first, so a budget too small to reach them by the seeded order still
    re-times the old winner (and stores it again when it still wins)."""
    cands, default = candidates(SHAPE, open_device(None).caps)
    costs = costs_for(cands, [])
    order = [c.name for c in driver.order_for("random", cands, default, seed=SHAPE.problem().key)]
    fast, second_fast = order[-1], order[-2]   # the seeded sample's last: a small budget never reaches them
    costs[fast], costs[second_fast] = 10.0, 20.0
    made = []

    def fake(timed, **kw):
        made.append(FakeEvaluator(costs))
        return made[-1]

    monkeypatch.setattr(driver, "GpuEvaluator", fake)
    tune(SHAPE, db, strategy="exhaustive", limits=Limits(runs=3))
    ident, build = DeviceIdentity.of(open_device(None).caps), BuildIdentity.current()
    assert db.winner(ident, build, SHAPE.problem()).variant == fast.partition("@")[0]

    # Every kernel edited: nothing current is stored, the old timings order the new search.
    monkeypatch.setattr(driver, "kernel_digest", lambda uri: "e" * 16)
    monkeypatch.setattr(driver, "is_current", lambda uri, k: k == "e" * 16)
    rerun = tune(SHAPE, db, strategy="random", limits=Limits(max_evals=3, runs=3))
    assert rerun.resumed == 0
    assert made[-1].checked[:3] == [default.name, fast, second_fast]
    assert rerun.winner.candidate.name == fast
    assert driver.order_for("random", cands, default, seed="k", stale={second_fast: 2.0, fast: 1.0})[:3] == \
        [default, *(c for n in (fast, second_fast) for c in cands if c.name == n)]


def _store(db, caps, problem, variant, splits=1, kernel=None):
    db.set_winner(DeviceIdentity.of(caps), BuildIdentity.current(),
                  Winner(problem=problem, variant=variant.uri, splits=splits, median_us=1.0, spread_us=0.0,
                         kernel=kernel_digest(variant.uri) if kernel is None else kernel))


def test_dispatch_levels_exact_nearest_default(db):
    caps = open_device(None).caps
    _, _, how = choose_variant(SHAPE, caps, None, None)
    assert how == "heuristic default"
    cands, default = candidates(SHAPE, caps)
    pick = next(c.variant for c in cands if c.variant.br != default.variant.br)
    other = dataclasses.replace(SHAPE, n_kv=3000)          # same heads/types/features, another bucket
    assert other.problem() != SHAPE.problem()
    _store(db, caps, SHAPE.problem(), pick)
    v, splits, how = choose_variant(SHAPE, caps, None, None)
    assert how.startswith("tuned, exact") and (v.br, v.bc, v.wg) == (pick.br, pick.bc, pick.wg)
    v, _, how = choose_variant(other, caps, None, None)
    assert how.startswith("tuned, nearest") and (v.br, v.bc) == (pick.br, pick.bc)
    assert v.aligned == (other.n_kv % v.bc == 0)
    masked = dataclasses.replace(SHAPE, mask_shape=(1, 1, SHAPE.n_q, SHAPE.n_kv))  # other features
    assert choose_variant(masked, caps, None, None)[2] == "heuristic default"
    # A forced path ignores stored decisions.
    assert choose_variant(SHAPE, caps, default.variant.path, None)[2] == "heuristic default"


def test_dispatch_skips_stale_decisions(db, monkeypatch):
    """A decision the device can no longer run (here: why_invalid says so) is skipped."""
    caps = open_device(None).caps
    cands, default = candidates(SHAPE, caps)
    stale = cands[-1].variant
    _store(db, caps, SHAPE.problem(), stale)
    assert choose_variant(SHAPE, caps, None, None)[2].startswith("tuned, exact")
    monkeypatch.setattr(dispatch, "why_invalid", lambda v, c: "no longer fits" if v == stale else None)
    v, _, how = choose_variant(SHAPE, caps, None, None)
    assert how == "heuristic default" and v == default.variant


def test_dispatch_skips_a_decision_whose_kernel_changed_since_it_was_timed(db):
    """A template edit that changes the winner's source makes its timing say nothing: skipped."""
    caps = open_device(None).caps
    cands, default = candidates(SHAPE, caps)
    pick = next(c.variant for c in cands if c.variant.br != default.variant.br)
    _store(db, caps, SHAPE.problem(), pick, kernel="0" * 16)   # timed with another source
    v, _, how = choose_variant(SHAPE, caps, None, None)
    assert how == "heuristic default" and v == default.variant
    _store(db, caps, SHAPE.problem(), pick)
    assert choose_variant(SHAPE, caps, None, None)[2].startswith("tuned, exact")


def test_corrupt_db_warns_and_uses_the_default(tmp_path, monkeypatch):
    path = tmp_path / "bad.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("KGEN_DB", str(path))
    monkeypatch.setattr(dispatch, "_warned", set())
    with pytest.warns(UserWarning, match="kgen db reset"):
        _, _, how = choose_variant(SHAPE, open_device(None).caps, None, None)
    assert how == "heuristic default"


def test_quick_tune_then_dispatch_uses_the_winner(tmp_path, monkeypatch, capsys):
    """The main job end to end on the default device, with a small budget of candidates."""
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "q.sqlite"))
    assert main(["tune", "--suite", "quick", "--max-evals", "2", "--runs", "3"]) == 0
    out = capsys.readouterr()
    assert "winners on" in out.out and "rejected" not in out.err
    # Each case says what it took: its seconds and candidates timed (at most --max-evals).
    per_case = re.findall(r"^  (.+): (\d+) s, (\d+) candidate\(s\)$", out.err, re.M)
    assert [name for name, _, _ in per_case] == [c.name for c in kgen.tools.suites.SUITES["quick"]]
    assert all(1 <= int(n) <= 2 for _, _, n in per_case)
    caps = open_device(None).caps
    with TuningDB(tmp_path / "q.sqlite") as db:
        winners = db.winners(DeviceIdentity.of(caps), BuildIdentity.current())
    assert len(winners) == 2
    # A shape of a tuned class now runs the stored winner, and is still right.
    case = next(c for c in kgen.tools.suites.SUITES["quick"] if c.n_q == 1).fitted(caps)
    s = case.shapes()
    v, _, how = choose_variant(fold_gqa(s), caps, None, None)   # as a plan folds GQA groups
    assert how.startswith("tuned, exact")
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, s.heads_q, 1, 128), dtype=np.float32)
    k = rng.standard_normal((1, s.heads_kv, s.n_kv, 128), dtype=np.float32)
    vv = rng.standard_normal((1, s.heads_kv, s.n_kv, 128), dtype=np.float32)
    mask = rng.uniform(-1, 0, (1, s.n_kv)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = kgen.attention(q, k, vv, mask=mask)
    ref = reference.attention(q, kgen.quant.roundtrip(k, "f16"), kgen.quant.roundtrip(vv, "f16"), mask=mask)
    assert reference.nmse(out, ref) <= 5e-4


def test_autotune_at_call_time_stores_and_uses_a_decision(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "a.sqlite"))
    monkeypatch.setenv("KGEN_DEBUG", "1")
    rng = np.random.default_rng(5)
    q = rng.standard_normal((1, 2, 3, 64), dtype=np.float32)
    k = rng.standard_normal((1, 1, 70, 64), dtype=np.float32)
    v = rng.standard_normal((1, 1, 70, 64), dtype=np.float32)
    out = kgen.attention(q, k, v)                      # no decision: heuristic, nothing tuned
    assert "heuristic default" in capsys.readouterr().out
    assert not (tmp_path / "a.sqlite").exists()
    out = kgen.attention(q, k, v, autotune=True)
    log = capsys.readouterr().out
    assert "tuning it now" in log and "tuned, exact" in log
    ref = reference.attention(q, kgen.quant.roundtrip(k, "f16"), kgen.quant.roundtrip(v, "f16"))
    assert reference.nmse(out, ref) <= 5e-4
    kgen.attention(q, k, v, autotune=True)             # decided: no second tune
    assert "tuning it now" not in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--suite", "h100-anchors", "--case", "nope"], "--case nope: no case of h100-anchors matches"),
    (["--runs", "1"], "runs=1: >= 3"),
    (["--budget", "0"], "budget=0"),
    (["--max-evals", "0"], "max_evals=0"),
    (["--path", "tensorcore"], "unknown path 'tensorcore'"),
])
def test_tune_rejects_bad_arguments_before_the_device(argv, message, monkeypatch, capsys):
    monkeypatch.setattr("kgen.runtime.open_device", lambda *a, **k: pytest.fail("opened the device"))
    assert main(["tune", *argv]) == 2   # a usage error; 1 is for a tune that finds no winner
    err = capsys.readouterr().err
    assert err.startswith("kgen tune: ") and message in err and err.count("\n") == 1, err


def test_case_filter_picks_cases_by_name():
    from kgen.tools.suites import suite
    assert [c.name for c in suite("h100-anchors", ["p3", "P4"])] == ["P3 decode 128", "P4 decode MLA"]


def test_a_budget_cut_still_counts_every_stored_outcome(space):
    """Resumed outcomes cost nothing: the best stored one stays a contender however early the
    budget runs out (a rerun with more candidates once lost its old winner this way)."""
    cands, default = space
    costs = costs_for(cands, [])
    last = cands[-1]
    known = {last.name: Outcome(last, "ok", median=1.0, spread=0.0, runs=3)}
    ticks = iter(range(1000))
    winner, _, outcomes = run_search("exhaustive", cands, default, FakeEvaluator(costs), Limits(budget_s=1.5, runs=3),
                                     seed="k", known=known, clock=lambda: next(ticks))
    assert len(outcomes) < len(cands) and outcomes[-1].candidate == last and winner.candidate == last


def test_budget_cuts_sample_every_path_and_conversion():
    from kgen.profiles import H100
    from kgen.tools.suites import P5
    from kgen.tune.search import order_for, stratum
    shapes = fold_gqa(P5.shapes())
    cands, default = candidates(shapes, H100)
    order = order_for("halving", cands, default, seed="P5")
    assert order[0] == default and sorted(c.name for c in order) == sorted(c.name for c in cands)
    strata = {stratum(c.variant) for c in cands}
    first = {stratum(c.variant) for c in order[1:1 + len(strata)]}
    assert len(strata) >= 5 and first == strata  # one of each before any second
    assert ("coopmat1", True, False, True) in strata  # register softmax behind the f16 conversion
    assert order == order_for("halving", cands, default, seed="P5")


def test_matrix_hardware_searches_scalar_tiles_for_few_row_decodes_only():
    from kgen.profiles import H100
    from kgen.tools.suites import P1, P3
    from kgen.tune.candidates import SCALAR_DECODE_ROWS
    decode = fold_gqa(P3.shapes())                  # 8 KV heads x 4 folded rows
    assert decode.n_q <= SCALAR_DECODE_ROWS
    scalar = [c.variant for c in candidates(decode, H100)[0] if c.variant.path.value == "scalar"]
    direct = [v for v in scalar if v.schedule != "stage"]
    assert len(direct) >= 8 and len(scalar) == len(direct) + 1   # + the scalar default (staged)
    assert {(v.br, v.row_split) for v in direct} == {(4, 1)} and any(v.split_k for v in direct)
    assert any(v.schedule == "stream" for v in direct) and any(v.wg == 8 * v.subgroup for v in direct)
    prefill = fold_gqa(P1.shapes())
    assert sum(c.variant.path.value == "scalar" for c in candidates(prefill, H100)[0]) == 1


def test_a_budgeted_sample_polishes_the_neighbours_of_its_best():
    """The sample stops at 72% of the budget (80% of the 90% before the confirm step) and times
    the split counts and fused_reduce of its best kernels: here the best plan is only reachable
    that way."""
    from kgen.tune import Candidate
    from kgen.tune.search import neighbours
    from kgen.variant import Variant
    base = dict(path="scalar", head_k=64, head_v=64, k_type="f16", v_type="f16", wg=32, subgroup=8, row_split=1)
    family_v = Variant(**base, br=4, bc=16, d_split=8, split_k=True)
    family = [Candidate(family_v, 2), Candidate(family_v, 4), Candidate(family_v, 8),
              Candidate(family_v.replace(fused_reduce=True), 8)]
    others = [Candidate(Variant(**base, br=br, bc=bc, d_split=ds))
              for br in (1, 2, 4, 8) for bc in (16, 32, 64) for ds in (4, 8) if (br, bc, ds) != (4, 16, 8)]
    assert set(c.name for c in neighbours(family[0], family + others)) == {c.name for c in family[1:]}
    cands, default = [family[0], *others, *family[1:]], family[0]
    costs = {c.name: 200.0 + i for i, c in enumerate(others)} | dict(zip((c.name for c in family), (150.0, 140.0, 120.0, 100.0)))
    ev = FakeEvaluator(costs)
    winner, _, outcomes = run_search("random", cands, default, ev, Limits(budget_s=20, runs=3), seed="k",
                                     clock=lambda: len(ev.checked))
    assert winner.candidate == family[3]
    assert len(outcomes) < len(cands)            # a sample, not everything
    # Without a budget (max_evals) there is no polish: the sample's best wins.
    ev = FakeEvaluator(costs)
    winner, _, _ = run_search("random", cands, default, ev, Limits(max_evals=3, runs=3), seed="k")
    assert winner.candidate != family[3]


class LuckyEvaluator(FakeEvaluator):
    """Short timings of `lucky` come out at `short_us`; full ones at its true cost."""

    def __init__(self, costs, lucky, short_us, full_runs):
        super().__init__(costs)
        self.lucky, self.short_us, self.full_runs = lucky, short_us, full_runs
        self.runs_of: dict[str, list[int]] = {}

    def time(self, c, runs):
        self.runs_of.setdefault(c.name, []).append(runs)
        if c.name == self.lucky and runs < self.full_runs:
            return [self.short_us] * runs
        return super().time(c, runs)


def test_a_budget_spent_in_the_first_round_still_times_the_finalists_in_full(space):
    """Halving whose budget runs out while sampling: without the confirm step the winner was a
    3-run timing. The best few are timed again with the full runs, so a lucky short timing
    (90 against a true 130) loses to the truly fastest (100), which is timed in full too."""
    from kgen.tune.search import CONFIRM_TOP
    cands, default = space
    costs = costs_for(cands, [])

    def search(ev, known=None):
        # The budget is gone after six checks: no polish and no halving round.
        return run_search("halving", cands, default, ev, Limits(budget_s=60, runs=9), seed="k", known=known,
                          clock=lambda: 0 if len(ev.checked) < 6 else 1000)

    probe = LuckyEvaluator(costs, "", 0.0, full_runs=9)
    sampled = [o.candidate for o in search(probe)[2] if o.candidate != default]
    assert len(sampled) >= 4 and len(sampled) < len(cands) - 1
    lucky, best = sampled[1], sampled[3]
    costs[lucky.name], costs[best.name] = 130.0, 100.0
    ev = LuckyEvaluator(costs, lucky.name, 90.0, full_runs=9)
    winner, _, outcomes = search(ev)
    assert winner.candidate == best and winner.runs == 9
    assert ev.runs_of[lucky.name] == [3, 9] and ev.runs_of[best.name] == [3, 9]
    top = sorted((o for o in outcomes if o.status == "ok"), key=lambda o: o.median)[:CONFIRM_TOP]
    assert all(o.runs == 9 for o in top)
    # Stored outcomes with full timings are not timed again.
    ev2 = LuckyEvaluator(costs, lucky.name, 90.0, full_runs=9)
    again, _, _ = search(ev2, known={o.candidate.name: o for o in outcomes})
    assert again.candidate == best and best.name not in ev2.runs_of


def test_the_best_of_a_cut_search_has_its_nearest_neighbours_timed():
    """A budget gone after the first check (no sample polish, no halving round): the best still has
    its one-knob neighbours timed (fused reduce switched, next split counts), and the fused one
    wins; a kernel two knobs away is not timed."""
    from kgen.tune import Candidate
    from kgen.tune.search import nearest
    from kgen.variant import Variant
    base = dict(path="scalar", head_k=64, head_v=64, k_type="f16", v_type="f16", wg=32, subgroup=8, row_split=1)
    kernel = Variant(**base, br=4, bc=16, d_split=8, split_k=True)
    head = Candidate(kernel, 4)
    near = [Candidate(kernel.replace(fused_reduce=True), 4), Candidate(kernel, 2), Candidate(kernel, 8)]
    far = [Candidate(kernel, 16), Candidate(kernel.replace(fused_reduce=True), 8)]
    others = [Candidate(Variant(**base, br=br, bc=bc, d_split=8)) for br in (1, 2) for bc in (16, 32)]
    cands = [head, *others, *far, *near]
    assert {c.name for c in nearest(head, cands)} == {c.name for c in near}
    costs = {c.name: 200.0 + i for i, c in enumerate(others)} | {c.name: 50.0 for c in far}
    costs |= {head.name: 100.0, near[0].name: 90.0, near[1].name: 110.0, near[2].name: 105.0}
    ev = FakeEvaluator(costs)
    winner, _, _ = run_search("halving", cands, head, ev, Limits(budget_s=60, runs=9), seed="k",
                              clock=lambda: 0 if len(ev.checked) < 1 else 1000)
    assert winner.candidate == near[0]
    assert not {c.name for c in far} & set(ev.checked)
