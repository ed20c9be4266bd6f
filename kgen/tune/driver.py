"""Tune one problem class on one device: enumerate -> compile (in the background) -> check ->
time -> store. Every outcome is stored as soon as it exists, so Ctrl-C keeps what was
measured and a rerun resumes from it."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..shapes import Shapes, fold_gqa
from ..compile import compile_iter
from ..errors import CompileError
from ..identity import BuildIdentity, DeviceIdentity, is_current, kernel_digest
from ..problem import ProblemClass
from ..tunedb import Measurement, TuningDB, Winner
from ..variant import PathKind
from .candidates import Candidate, candidates
from .measure import GpuEvaluator, describe_shape
from .search import Limits, Outcome, order_for, run_search

# CPU devices (lavapipe) build each pipeline in seconds: a few candidates keep a tune short.
CPU_MAX_EVALS = 4


@dataclass
class TuneResult:
    problem: ProblemClass
    shape: Shapes
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
        finally:
            with self.cond:
                self.finished = True
                self.cond.notify_all()

    def error_of(self, uri: str) -> CompileError | None:
        with self.cond:
            self.cond.wait_for(lambda: uri in self.done or self.finished)
            return self.done.get(uri)


CRASH_MARK = ("crashed the process while being checked (a driver crash?); "
              "a rerun skips it, `kgen db reset` forgets it")


class _Evaluator:
    """GpuEvaluator behind the background compiler: compile errors lose without a GPU call.
    Before a check a crash marker is stored, replaced by the outcome: a candidate that takes
    the process down (a driver crash in pipeline creation) is skipped when the tune resumes."""

    def __init__(self, gpu: GpuEvaluator, ahead: _CompileAhead, mark: Callable, unmark: Callable):
        self.gpu, self.ahead, self.mark, self.unmark = gpu, ahead, mark, unmark

    def check(self, c: Candidate) -> Outcome:
        if (error := self.ahead.error_of(c.variant.uri)) is not None:
            return Outcome(c, "failed", reason=f"CompileError: {error}"[:2000])
        self.mark(Outcome(c, "failed", reason=CRASH_MARK))
        try:
            return self.gpu.check(c)
        except BaseException:
            self.unmark(c)
            raise

    def time(self, c: Candidate, runs: int) -> list[float]:
        return self.gpu.time(c, runs)


def _known(db: TuningDB, device: DeviceIdentity, build: BuildIdentity, problem: ProblemClass,
           shape: str) -> dict[str, Outcome]:
    """Outcomes stored by an earlier run on the same timing shape, of kernels whose source has
    not changed since (resume; after a template edit only the kernels it changed are timed)."""
    known = {}
    for m in db.measurements(device, build, problem):
        if m.shape != shape or not is_current(m.variant, m.kernel):
            continue
        c = Candidate.parse(f"{m.variant}@{m.splits}")
        known[c.name] = Outcome(c, m.status, nmse=m.nmse, reason=m.reason, median=m.median_us,
                                spread=m.spread_us, runs=m.runs)
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


def tune(timed: Shapes, db: TuningDB, *, device=None, strategy: str = "auto", limits: Limits | None = None,
         paths: tuple[PathKind, ...] | None = None, progress: Progress | None = None,
         clock: Callable[[], float] = time.monotonic) -> TuneResult:
    """Tune the class of `timed` (timing that very shape) on `device`; store and return the result."""
    from ..planning.probe import open_for_kernels
    dev = open_for_kernels(device)
    caps = dev.caps
    timed = fold_gqa(timed)   # tune what plans will run (see kgen.api.fold_gqa)
    problem = timed.problem()
    strategy, limits = resolve_strategy(strategy, caps, limits or Limits())
    ident, build = DeviceIdentity.of(caps), BuildIdentity.current()
    shape = describe_shape(timed)
    cands, default = candidates(timed, caps, paths)
    known = _known(db, ident, build, problem, shape)
    stale = {name: us for name, us in _stale(db, ident, build, problem, shape).items() if name not in known}
    result = TuneResult(problem, timed, strategy, default, resumed=sum(c.name in known for c in cands))
    todo = order_for(strategy, cands, default, seed=problem.key, stale=stale)[:limits.max_evals]
    progress = progress or Progress()
    progress.start(problem, len(todo))
    start = clock()

    def store(o: Outcome) -> None:
        db.record(ident, build, _measurement(problem, shape, o))
        first = all(o is not seen for seen in result.outcomes)
        if first:
            result.outcomes.append(o)
        progress.step(o, first)

    def unmark(c: Candidate) -> None:
        db.forget(ident, build, problem, c.variant.uri, c.splits)

    ev = _Evaluator(GpuEvaluator(timed, device=device), _CompileAhead([c for c in todo if c.name not in known]),
                    mark=lambda o: db.record(ident, build, _measurement(problem, shape, o)), unmark=unmark)
    try:
        result.winner, result.runner_up, result.outcomes = run_search(
            strategy, cands, default, ev, limits, seed=problem.key, known=known, stale=stale, on_outcome=store,
            clock=clock)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        progress.stop()
        result.seconds = clock() - start
    if result.winner is not None and not result.interrupted:
        w, r = result.winner, result.runner_up
        db.set_winner(ident, build, Winner(
            problem=problem, variant=w.candidate.variant.uri, splits=w.candidate.splits,
            median_us=w.median, spread_us=w.spread, runner_up=r.candidate.name if r else None,
            runner_up_us=r.median if r else None,
            candidates=sum(o.status == "ok" for o in result.outcomes), strategy=strategy,
            kernel=kernel_digest(w.candidate.variant.uri)))
    return result
