"""Search strategies and the winner rule, free of Vulkan: they see candidates only through an
`Evaluator` (check once, time on request), so tests drive them with injected timings.

The winner rule is the noise guard: the best few are first timed with the full runs (a budget can
end a search with short timings), then candidates whose runs overlap the best one's (median +-
interquartile range) are re-timed with more runs. A tie is then a median that the best one's
cannot be told apart from: their notches overlap (median +- 1.57 IQR / sqrt(runs), the box-plot
notch of McGill, Tukey and Larsen 1978, roughly a 95% interval of the median). Ties go to the
heuristic default if it is among them, else to the earliest candidate in enumeration order, so
reruns pick the same winner even though every timing differs a little; a slower median with a
wide spread is no tie.
"""
from __future__ import annotations

import itertools
import math
import random
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..variant import Schedule
from .candidates import Candidate

STRATEGIES = ("exhaustive", "random", "halving")


@dataclass
class Outcome:
    candidate: Candidate
    status: str                      # "ok" | "wrong" | "failed" (tunedb.STATUSES)
    samples: list[float] = field(default_factory=list)
    nmse: float | None = None
    reason: str = ""
    median: float | None = None      # set from samples, or from a stored measurement
    spread: float | None = None
    runs: int = 0                    # timed runs behind median (a stored measurement's too)
    recorded: bool = False           # the tuning DB holds it as it is (new timings clear it)

    def add(self, samples: list[float]) -> None:
        self.recorded = False
        self.samples = list(samples)
        self.runs = len(self.samples)
        self.median, self.spread = median_spread(self.samples)


def median_spread(samples: list[float]) -> tuple[float, float]:
    """Median and interquartile range (0 for fewer than 4 samples: no spread measured)."""
    med = statistics.median(samples)
    if len(samples) < 4:
        return med, 0.0
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return med, q3 - q1


class CandidateFailed(Exception):
    """Raised by Evaluator.time when the candidate cannot run on the timing shape (the reason)."""


class Evaluator(Protocol):
    # status ok/wrong/failed, no samples yet; or an outcome `recorded` by another tuner meanwhile
    def check(self, c: Candidate) -> Outcome: ...
    def time(self, c: Candidate, runs: int) -> list[float]: ...


@dataclass
class Limits:
    budget_s: float | None = None    # wall-clock seconds for this class
    max_evals: int | None = None     # candidates checked and timed
    runs: int = 10                   # timed runs per candidate (the first round of halving uses fewer)

    def __post_init__(self):
        if self.budget_s is not None and not self.budget_s > 0:
            raise ValueError(f"budget={self.budget_s}: seconds, > 0")
        if self.max_evals is not None and self.max_evals < 1:
            raise ValueError(f"max_evals={self.max_evals}: >= 1")
        if self.runs < 3:
            raise ValueError(f"runs={self.runs}: >= 3 (a median needs a few)")


def stratum(v) -> tuple:
    """The kind of kernel a candidate is, for dealing a budget out fairly: path, K/V conversion,
    and the schedules that differ most (stream decode, softmax in registers)."""
    return (v.path.value, v.kv_f16, v.schedule is Schedule.STREAM, v.schedule.softmax_in_registers)


def order_for(strategy: str, cands: list[Candidate], default: Candidate, seed: str,
              stale: dict[str, float] | None = None) -> list[Candidate]:
    """Which candidates to try, in which order: default first; random and halving shuffle the
    rest with a seed from the class, so a rerun (and a resume) tries the same ones, and deal
    them out one stratum (`stratum`) at a time, so that a budget cuts
    a fair sample of each: on an H100 coopmat1's 378 candidates of a q8_0 prefill class otherwise
    drowned coopmat2's 54, where the winners are.
    `stale` (candidate name -> median us) holds timings of kernels that changed since: those
    candidates come right after the default, fastest first. After a template edit an H100
    resume of P5 with a budget of 40 never re-timed the old winner (659 us, now edited) and
    stored one at 745 us."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}: one of {', '.join(STRATEGIES)}")
    stale = stale or {}
    again = sorted((c for c in cands if c != default and c.name in stale), key=lambda c: stale[c.name])
    rest = [c for c in cands if c != default and c.name not in stale]
    if strategy != "exhaustive":
        rng = random.Random(seed)
        strata: dict[tuple, list[Candidate]] = {}
        for c in rest:
            strata.setdefault(stratum(c.variant), []).append(c)
        for group in strata.values():
            rng.shuffle(group)
        rest = [c for deal in itertools.zip_longest(*strata.values()) for c in deal if c is not None]
    return [default] + again + rest


# A budgeted sample keeps this share of the budget to time the neighbours of its best few
# (`neighbours`): on an H100 a 150 s sample timed 141 of a decode's 1830 candidates and missed
# the split count and fused reduce of its own best kernels.
POLISH_SHARE = 0.2
POLISH_TOP = 3
# The finalists: the best few are timed with the full runs before the winner rule sees them,
# in the last tenth of a budget (or past it): a budget spent in the first round of halving
# leaves every timing at 3 runs with no spread, too few to order close candidates.
CONFIRM_TOP = 4
CONFIRM_SHARE = 0.1
# Knobs a neighbour may differ in: the KV split count, and these uri tokens.
_NEIGHBOUR_TOKENS = re.compile(r"_(fusedred|stream|splitk)(?=_|$)")


def neighbours(c: Candidate, cands: list[Candidate]) -> list[Candidate]:
    """The candidates one knob away from `c`: the same kernel tile with another split count,
    or with fused_reduce or the stream schedule switched, in enumeration order."""
    key = _NEIGHBOUR_TOKENS.sub("", c.variant.uri)
    return [n for n in cands if n != c and _NEIGHBOUR_TOKENS.sub("", n.variant.uri) == key]


def nearest(c: Candidate, cands: list[Candidate]) -> list[Candidate]:
    """The neighbours exactly one knob from `c`: fused_reduce or the stream schedule switched at
    the same split count, or the same kernel at the next smaller and next larger split count."""
    family = neighbours(c, cands)
    tokens = set(_NEIGHBOUR_TOKENS.findall(c.variant.uri))
    switched = [n for n in family if n.splits == c.splits
                and len(tokens ^ set(_NEIGHBOUR_TOKENS.findall(n.variant.uri))) == 1]
    counts = [n.splits for n in family if n.variant == c.variant]
    lower = max((s for s in counts if s < c.splits), default=None)
    upper = min((s for s in counts if s > c.splits), default=None)
    return switched + [n for n in family if n.variant == c.variant and n.splits in (lower, upper)]


def run_search(strategy: str, cands: list[Candidate], default: Candidate, ev: Evaluator, limits: Limits,
               *, seed: str, known: dict[str, Outcome] | None = None, stale: dict[str, float] | None = None,
               on_outcome: Callable[[Outcome], None] = lambda o: None,
               clock: Callable[[], float] = time.monotonic) -> tuple[Outcome | None, Outcome | None, list[Outcome]]:
    """Check and time candidates under `limits`; returns (winner, runner-up, all outcomes).
    `known` holds outcomes measured earlier (resume): they are not measured again unless
    they end up among the best CONFIRM_TOP with fewer than `limits.runs` runs, or in a near-tie.
    `stale` orders the search (`order_for`). `on_outcome` sees each new outcome as soon as it exists."""
    known = known or {}
    start = clock()
    # The last CONFIRM_SHARE of a budget is left to the confirm step (_confirm).
    search_s = limits.budget_s * (1 - CONFIRM_SHARE) if limits.budget_s is not None else None
    over = lambda: search_s is not None and clock() - start > search_s  # noqa: E731
    # A budgeted sample stops early enough to polish its best (exhaustive has nothing to add).
    polish = strategy != "exhaustive" and limits.budget_s is not None
    sample_s = search_s * (1 - POLISH_SHARE) if polish else search_s
    sampled = lambda: sample_s is not None and clock() - start > sample_s  # noqa: E731
    todo = order_for(strategy, cands, default, seed, stale)
    if limits.max_evals is not None:
        todo = todo[:limits.max_evals]
    first_runs = max(3, limits.runs // 3) if strategy == "halving" else limits.runs
    outcomes: list[Outcome] = []

    def measure(c: Candidate) -> None:
        o = ev.check(c)
        if not o.recorded:   # else measured by another tuner meanwhile: taken as it was stored
            _timed(o, ev, first_runs)
        outcomes.append(o)
        on_outcome(o)

    for c in todo:
        if c.name in known:   # free: kept even past the budget, so a resume never loses a winner
            outcomes.append(known[c.name])
            continue
        if sampled() and outcomes:
            continue
        measure(c)
    if polish:
        seen = {o.candidate.name for o in outcomes}
        for best in _ok_sorted(outcomes)[:POLISH_TOP]:
            for n in neighbours(best.candidate, cands):
                if n.name in seen or over():
                    continue
                seen.add(n.name)
                if n.name in known:
                    outcomes.append(known[n.name])
                else:
                    measure(n)
    if strategy == "halving":
        survivors = _ok_sorted(outcomes)
        runs = first_runs
        while len(survivors) > 2 and runs < limits.runs and not over():
            # The default always goes on: "vs default" then compares timings of one round.
            kept = survivors[:max(2, len(survivors) // 2)]
            survivors = kept + [o for o in survivors[len(kept):] if o.candidate == default]
            runs = min(limits.runs, runs * 2)
            for o in survivors:
                _timed(o, ev, runs)
                on_outcome(o)
            survivors = _ok_sorted(survivors)
    if polish:
        # The best after halving may come from outside the sample's early best few, whose
        # neighbours the polish above timed on 3-run medians: its own nearest ones are timed
        # now, past the search's share (at most four). On an H100 a fresh P3 tune picked a
        # decode tile at 37.0 us while the same tile with the fused reduce, never timed, runs 35.5.
        seen = {o.candidate.name for o in outcomes}
        best = _ok_sorted(outcomes)[:1]
        for n in nearest(best[0].candidate, cands) if best else ():
            if n.name in known and n.name not in seen:
                outcomes.append(known[n.name])
            elif n.name not in seen:
                measure(n)
    _confirm(outcomes, ev, limits.runs, on_outcome)
    winner, runner_up = pick_winner(outcomes, default, ev, limits.runs, on_outcome, cands)
    return winner, runner_up, outcomes


def _confirm(outcomes: list[Outcome], ev: Evaluator, runs: int, on_outcome: Callable[[Outcome], None]) -> None:
    """Time the best CONFIRM_TOP outcomes again with `runs` runs where fewer stand behind them
    (a round cut short by the budget, a stored short timing), until the best CONFIRM_TOP are
    all full timings: a lucky short timing that drops out lets the next one in. At most
    3 * CONFIRM_TOP timings, so the step stays a few seconds past any budget."""
    timed: set[str] = set()
    while len(timed) < 3 * CONFIRM_TOP:
        short = [o for o in _ok_sorted(outcomes)[:CONFIRM_TOP] if o.runs < runs and o.candidate.name not in timed]
        if not short:
            return
        for o in short:
            timed.add(o.candidate.name)
            _timed(o, ev, runs)
            on_outcome(o)


def _timed(o: Outcome, ev: Evaluator, runs: int) -> None:
    if o.status != "ok":
        return
    try:
        o.add(ev.time(o.candidate, runs))
    except CandidateFailed as exc:
        o.status, o.reason, o.median, o.spread, o.recorded = "failed", str(exc), None, None, False


def _ok_sorted(outcomes: list[Outcome]) -> list[Outcome]:
    return sorted((o for o in outcomes if o.status == "ok"), key=lambda o: o.median)


def _overlapping(ok: list[Outcome]) -> list[Outcome]:
    """The outcomes whose runs overlap the best one's (median +- IQR): worth a longer timing."""
    best = ok[0]
    return [o for o in ok if o.median - o.spread <= best.median + best.spread]


NOTCH = 1.57  # a box plot's notch half-width, in IQR / sqrt(runs)


def _notch(o: Outcome) -> float:
    return NOTCH * o.spread / math.sqrt(o.runs) if o.runs else 0.0


def _ties(ok: list[Outcome]) -> list[Outcome]:
    """The outcomes whose medians the best one's cannot be told apart from (notches overlap).
    With overlapping IQRs as the rule, an H100 tune gave P3's decode to a kernel 5% slower
    (39.1 +- 1.4 us beside 37.2 +- 0.8, 30 runs each), the earlier one in enumeration order."""
    best = ok[0]
    return [o for o in ok if o.median - _notch(o) <= best.median + _notch(best)]


def pick_winner(outcomes: list[Outcome], default: Candidate, ev: Evaluator, runs: int,
                on_outcome: Callable[[Outcome], None] = lambda o: None,
                order: list[Candidate] | None = None) -> tuple[Outcome | None, Outcome | None]:
    """Near-ties timed again with 3x the runs, then `decide`. `order`: the enumeration order that
    breaks ties (default: the order of `outcomes`)."""
    ok = _ok_sorted(outcomes)
    if not ok:
        return None, None
    close = _overlapping(ok)
    if len(close) > 1:
        for o in close:  # near-ties: more runs, so the medians settle and real gaps show
            _timed(o, ev, 3 * runs)
            on_outcome(o)
    return decide(outcomes, default, order if order is not None else [o.candidate for o in outcomes])


def decide(outcomes: list[Outcome], default: Candidate, order: list[Candidate]) -> tuple[Outcome | None, Outcome | None]:
    """The winner rule on timings as they are: the fastest passing outcome, or among those tied
    with it (`_ties`) the default, else the earliest in `order` (then by name). A pure function
    of the outcomes, so every tuner of a class that sees the same timings picks the same one
    (the tuning DB decides with it from all of a class's stored measurements)."""
    ok = _ok_sorted(outcomes)
    if not ok:
        return None, None
    rank = {c.name: i for i, c in enumerate(order)}
    tied = sorted(_ties(ok), key=lambda o: (o.candidate != default, rank.get(o.candidate.name, len(rank)),
                                            o.candidate.name))
    winner = tied[0]
    runner_up = next((o for o in ok if o is not winner), None)
    return winner, runner_up
