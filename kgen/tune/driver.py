"""Tune one problem class on one device: enumerate -> compile (in the background) -> check ->
time -> store. Every outcome is stored as soon as it exists, so Ctrl-C keeps what was
measured and a rerun resumes from it. Each check, with its first timing, and each later timing
of a candidate runs under a marker in the DB (TuningDB.claim) held by this process's lease: a
rerun after a kill measures the marked candidate again (up to CRASH_STRIKES deaths), and
concurrent tuners wait for each other's checks instead of reading them as crashes. The winner
is the DB's decision from every stored measurement (winner_rule)."""
from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..shapes import Shapes, fold_gqa
from ..compile import compile_iter
from ..errors import CompileError
from ..identity import BuildIdentity, DeviceIdentity, is_current, kernel_digest
from ..problem import ProblemClass
from ..tunedb import Measurement, TuningDB, TuningDBError, Winner
from ..tunedb.records import LEGACY_CRASH_MARK, TRANSIENT
from ..variant import PathKind
from .candidates import Candidate, candidates
from .measure import GpuEvaluator, describe_shape
from .paged import PagedBatch, PagedEvaluator, paged_candidates
from .search import CandidateFailed, Limits, Outcome, decide, order_for, run_search

# CPU devices (lavapipe) build each pipeline in seconds: a few candidates keep a tune short.
CPU_MAX_EVALS = 4


@dataclass
class TuneResult:
    problem: ProblemClass
    shape: "Shapes | PagedBatch"   # what was timed
    strategy: str
    default: Candidate
    winner: Outcome | None = None
    runner_up: Outcome | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    resumed: int = 0
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def wrong(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != "ok"]


class Progress:
    """What a tune reports while it runs; the CLI draws a bar from it."""

    def start(self, problem: ProblemClass, total: int) -> None: ...
    def step(self, outcome: Outcome, first: bool) -> None: ...   # first: a new candidate, not a re-timing
    def stop(self) -> None: ...


def resolve_strategy(strategy: str, caps, limits: Limits) -> tuple[str, Limits]:
    """`auto`: successive halving on a GPU; on a CPU device a seeded random sample."""
    if strategy != "auto":
        return strategy, limits
    if caps.device_type == "cpu":
        cap = CPU_MAX_EVALS if limits.max_evals is None else limits.max_evals
        return "random", Limits(limits.budget_s, cap, limits.runs)
    return "halving", limits


class _CompileAhead:
    """Compiles the candidates in order on a background thread; check() waits for its own."""

    def __init__(self, cands: list[Candidate]):
        self.done: dict[str, CompileError | None] = {}
        self.finished = False
        self.crashed: BaseException | None = None   # what stopped the thread other than a CompileError
        self.cond = threading.Condition()
        variants = list({c.variant.uri: c.variant for c in cands}.values())
        self.thread = threading.Thread(target=self._run, args=(variants,), daemon=True)
        self.thread.start()

    def _run(self, variants) -> None:
        try:
            for uri, outcome in compile_iter(variants):
                with self.cond:
                    self.done[uri] = outcome if isinstance(outcome, CompileError) else None
                    self.cond.notify_all()
        except BaseException as exc:  # a bad knob, a missing tool, a full disk: the tune's own error
            with self.cond:
                self.crashed = exc
        finally:
            with self.cond:
                self.finished = True
                self.cond.notify_all()

    def error_of(self, uri: str) -> CompileError | None:
        """The candidate's CompileError, None once it compiled; re-raises what stopped the thread
        before it got there."""
        with self.cond:
            self.cond.wait_for(lambda: uri in self.done or self.finished)
            if uri not in self.done and self.crashed is not None:
                raise self.crashed
            return self.done.get(uri)


# How kgen.toolchain.describe_exit words a signal death in the first line of a compile log.
_KILLED = re.compile(r"\bwas killed by SIG[A-Z0-9]+\b")


def _compile_failure(c: Candidate, error: CompileError) -> Outcome:
    """A compile error as the candidate's failure. A compiler killed by a signal (a crash, an OOM
    kill) said nothing about the kernel: that failure is stored as TRANSIENT, so the next tune
    compiles it again. The exit status where the error carries one; else the log's first line,
    and a compiler that failed without a word is taken for one killed too."""
    if error.returncode is not None:
        killed = error.returncode < 0
    else:
        first = error.log.strip().partition("\n")[0]
        killed = not first or _KILLED.search(first) is not None
    reason = f"CompileError: {error}"[:2000]
    return Outcome(c, "failed", reason=TRANSIENT + reason if killed else reason)


def _retried(m: Measurement) -> bool:
    """A stored outcome that says nothing lasting: checked again (a transient failure, an older
    kgen's marker of a check in progress)."""
    return m.reason.startswith(TRANSIENT) or m.reason == LEGACY_CRASH_MARK


def _outcome(m: Measurement) -> Outcome:
    return Outcome(Candidate.parse(f"{m.variant}@{m.splits}"), m.status, nmse=m.nmse, reason=m.reason,
                   median=m.median_us, spread=m.spread_us, runs=m.runs, recorded=True)


# How long a tuner waits for a candidate that another live tuner is checking, polling the DB.
WAIT_FOR_OTHER_S = 300.0
POLL_S = (0.05, 0.5)


@dataclass
class _Marks:
    """The markers of one tune: claim() before a check, claim_timing() before a later timing, so
    a rerun can tell a check or timing that took its process down (a strike; CRASH_STRIKES of
    them and the candidate is stored as failed) from one still running in another tuner (a check
    is waited for, and its outcome taken)."""
    db: TuningDB
    device: DeviceIdentity
    build: BuildIdentity
    problem: ProblemClass
    shape: str
    owner: str

    def stored(self, c: Candidate) -> Outcome | None:
        m = self.db.measurement(self.device, self.build, self.problem, c.variant.uri, c.splits)
        if m is None or m.shape != self.shape or not is_current(m.variant, m.kernel) or _retried(m):
            return None
        return _outcome(m)

    def claim(self, c: Candidate) -> Outcome | None:
        """None: this tune checks `c` now. Else the outcome to take instead: measured meanwhile by
        another tuner, or a crash verdict, or (after WAIT_FOR_OTHER_S) a failure not stored."""
        failed = _measurement(self.problem, self.shape, Outcome(c, "failed"))
        deadline, pause = time.monotonic() + WAIT_FOR_OTHER_S, POLL_S[0]
        while True:
            if (done := self.stored(c)) is not None:
                return done
            claim = self.db.claim(self.device, self.build, failed, self.owner)
            if claim.state == "go":
                return None
            if claim.state == "crashed":
                return Outcome(c, "failed", reason=claim.reason, recorded=True)
            if time.monotonic() > deadline:   # recorded: nothing of this tune's to store
                return Outcome(c, "failed", recorded=True, reason=(
                    f"checked by another tuner (lease {claim.holder}) for over {WAIT_FOR_OTHER_S:.0f} s; "
                    "not timed by this one"))
            time.sleep(pause)
            pause = min(POLL_S[1], 2 * pause)

    def claim_timing(self, c: Candidate) -> None:
        """Mark `c`, measured before, for another timing: a timing that takes the process down
        is a strike as a check is, so a candidate that crashes in every re-timing of a resumed
        tune is stored as failed instead of crashing every rerun. CandidateFailed with the
        verdict at CRASH_STRIKES. A marker another live tuner holds is left to it and the timing
        runs anyway: it only loses the strike, should this process die in it."""
        claim = self.db.claim(self.device, self.build, _measurement(self.problem, self.shape, Outcome(c, "failed")),
                              self.owner)
        if claim.state == "crashed":
            raise CandidateFailed(claim.reason)


class _Evaluator:
    """GpuEvaluator behind the background compiler and the check markers: compile errors lose
    without a GPU call, and a candidate is checked or timed only under this tune's marker."""

    def __init__(self, gpu: GpuEvaluator, ahead: _CompileAhead, marks: _Marks):
        self.gpu, self.ahead, self.marks = gpu, ahead, marks
        self.checked: set[str] = set()   # passed their check here; first timing under its marker

    def check(self, c: Candidate) -> Outcome:
        if (error := self.ahead.error_of(c.variant.uri)) is not None:
            return _compile_failure(c, error)
        if (taken := self.marks.claim(c)) is not None:
            return taken
        outcome = self.gpu.check(c)   # the marker stays until its outcome is recorded (or the tune ends)
        if outcome.status == "ok":
            self.checked.add(c.name)
        return outcome

    def time(self, c: Candidate, runs: int) -> list[float]:
        if c.name in self.checked:
            self.checked.discard(c.name)
        else:   # recorded since its check: a marker of its own, dropped when this timing is recorded
            self.marks.claim_timing(c)
        return self.gpu.time(c, runs)


def _known(db: TuningDB, device: DeviceIdentity, build: BuildIdentity, problem: ProblemClass,
           shape: str) -> dict[str, Outcome]:
    """Outcomes stored by an earlier run on the same timing shape, of kernels whose source has
    not changed since (resume; after a template edit only the kernels it changed are timed)."""
    known = {}
    for m in db.measurements(device, build, problem):
        if m.shape != shape or not is_current(m.variant, m.kernel) or _retried(m):
            continue
        o = _outcome(m)
        known[o.candidate.name] = o
    return known


def _stale(db: TuningDB, device: DeviceIdentity, build: BuildIdentity, problem: ProblemClass,
           shape: str) -> dict[str, float]:
    """Median us of passing timings on the same shape of kernels whose source changed since:
    the search tries those candidates first (an earlier winner is likely to win again)."""
    stale = {}
    for m in db.measurements(device, build, problem):
        if m.shape == shape and m.status == "ok" and m.median_us is not None and not is_current(m.variant, m.kernel):
            name = Candidate.parse(f"{m.variant}@{m.splits}").name
            stale[name] = min(m.median_us, stale.get(name, m.median_us))
    return stale


def _measurement(problem: ProblemClass, shape: str, o: Outcome) -> Measurement:
    return Measurement(problem=problem, variant=o.candidate.variant.uri, splits=o.candidate.splits,
                       status=o.status, median_us=o.median, spread_us=o.spread, runs=o.runs,
                       nmse=o.nmse, reason=o.reason, shape=shape, kernel=kernel_digest(o.candidate.variant.uri))


def winner_rule(problem: ProblemClass, shape: str, cands: list[Candidate], default: Candidate,
                strategy: str) -> Callable[[list[Measurement]], Winner | None]:
    """The class's winner from all its stored measurements (search.decide): those that passed
    on `shape` with today's kernels, whoever measured them. The tuning DB applies it in the
    transaction that stores a measurement or a decision, so concurrent tuners agree."""
    def rule(stored: list[Measurement]) -> Winner | None:
        timed = [_outcome(m) for m in stored if m.shape == shape and m.status == "ok"
                 and m.median_us is not None and is_current(m.variant, m.kernel)]
        w, r = decide(timed, default, cands)
        if w is None:
            return None
        return Winner(problem=problem, variant=w.candidate.variant.uri, splits=w.candidate.splits,
                      median_us=w.median, spread_us=w.spread or 0.0, runner_up=r.candidate.name if r else None,
                      runner_up_us=r.median if r else None, candidates=len(timed), strategy=strategy,
                      kernel=kernel_digest(w.candidate.variant.uri))
    return rule


@dataclass(frozen=True)
class _Work:
    """What one tune measures: the class, the timed shape's description, the candidates and
    the evaluator that checks and times them (dense: Shapes; paged: a PagedBatch)."""
    timed: "Shapes | PagedBatch"
    problem: ProblemClass
    shape: str
    candidates: Callable
    evaluator: Callable

    @classmethod
    def of(cls, timed: "Shapes | PagedBatch") -> "_Work":
        if isinstance(timed, PagedBatch):
            return cls(timed, timed.problem(), timed.describe(), lambda caps, paths: paged_candidates(timed, caps),
                       lambda device: PagedEvaluator(timed, device=device))
        timed = fold_gqa(timed)   # tune what plans will run (see kgen.api.fold_gqa)
        return cls(timed, timed.problem(), describe_shape(timed), lambda caps, paths: candidates(timed, caps, paths),
                   lambda device: GpuEvaluator(timed, device=device))


def tune(timed: "Shapes | PagedBatch", db: TuningDB, *, device=None, strategy: str = "auto", limits: Limits | None = None,
         paths: tuple[PathKind, ...] | None = None, progress: Progress | None = None, retry_crashed: bool = False,
         clock: Callable[[], float] = time.monotonic) -> TuneResult:
    """Tune the class of `timed` (timing that very shape; a PagedBatch: a paged class) on
    `device`; store and return the result. The winner is the DB's decision from every stored
    measurement of the class on this shape (winner_rule), so it may be one another tuner
    measured. `retry_crashed`: check again the candidates stored as crashing the process."""
    from ..planning.probe import open_for_kernels
    dev = open_for_kernels(device)
    caps = dev.caps
    work = _Work.of(timed)
    timed, problem, shape = work.timed, work.problem, work.shape
    strategy, limits = resolve_strategy(strategy, caps, limits or Limits())
    ident, build = DeviceIdentity.of(caps), BuildIdentity.current()
    cands, default = work.candidates(caps, paths)
    rule = winner_rule(problem, shape, cands, default, strategy)
    with db.lease() as owner:
        if retry_crashed:
            db.retry_crashed(ident, build, problem)
        marks = _Marks(db, ident, build, problem, shape, owner)
        known = _known(db, ident, build, problem, shape)
        stale = {name: us for name, us in _stale(db, ident, build, problem, shape).items() if name not in known}
        result = TuneResult(problem, timed, strategy, default, resumed=sum(c.name in known for c in cands))
        todo = order_for(strategy, cands, default, seed=problem.key, stale=stale)[:limits.max_evals]
        progress = progress or Progress()
        progress.start(problem, len(todo))
        start = clock()

        def store(o: Outcome) -> None:
            if not o.recorded:
                db.record(ident, build, _measurement(problem, shape, o), owner=owner, rule=rule)
                o.recorded = True
            first = all(o is not seen for seen in result.outcomes)
            if first:
                result.outcomes.append(o)
            progress.step(o, first)

        ev = _Evaluator(work.evaluator(device),
                        _CompileAhead([c for c in todo if c.name not in known]), marks)
        try:
            _, _, result.outcomes = run_search(
                strategy, cands, default, ev, limits, seed=problem.key, known=known, stale=stale,
                on_outcome=store, clock=clock)
        except KeyboardInterrupt:
            result.interrupted = True
        finally:
            progress.stop()
            result.seconds = clock() - start
            with contextlib.suppress(TuningDBError):   # a DB gone bad: its markers die with the lease
                db.release(owner)
        if not result.interrupted and (w := db.decide(ident, build, problem, rule)) is not None:
            result.winner = _adopt(marks, result.outcomes, f"{w.variant}@{w.splits}") or Outcome(
                Candidate.parse(f"{w.variant}@{w.splits}"), "ok", median=w.median_us, spread=w.spread_us)
            result.runner_up = _adopt(marks, result.outcomes, w.runner_up) if w.runner_up else None
    return result


def _adopt(marks: _Marks, outcomes: list[Outcome], name: str) -> Outcome | None:
    """The passing outcome of candidate `name`: this tune's, else the stored one (another tuner
    measured it, or timed it where this tune's attempt failed)."""
    c = Candidate.parse(name)
    mine = next((o for o in outcomes if o.candidate == c and o.status == "ok"), None)
    if mine is not None:
        return mine
    stored = marks.stored(c)
    return stored if stored is not None and stored.status == "ok" else None
