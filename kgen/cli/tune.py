"""`kgen tune`: the main job. For each case of a suite, or of a model (--model, --shape):
generate -> compile -> verify -> time -> store, then a table of winners per class."""
from __future__ import annotations

import argparse
import sys
import time

from ..tools.suites import SUITES, Case, suite
from .db import printable
from .model import OWN_DEFAULT, add_case_options, chosen_cases


def _fraction(ceilings, case: Case, seconds: float, path) -> str:
    if ceilings is None:
        return "-"
    return f"{100 * ceilings.fraction(case.flops, case.min_bytes, seconds, path):.0f}%"


# Without --budget or --max-evals, each case on a GPU gets this long (CPU devices sample a few
# candidates instead, see kgen.tune.driver.CPU_MAX_EVALS).
GPU_CASE_BUDGET_S = 90  # the quick suite (2 cases) then tunes in about 4.5 min on an H100


class _Bar:
    """Progress with ETA on stderr (rich); one task per class."""

    def __init__(self, console):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[last]}"), console=console, transient=False)
        self.task = None

    def start(self, problem, total: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(problem.key, total=total, last="")

    def step(self, outcome, first: bool) -> None:
        done = outcome.status if outcome.status != "ok" else f"{outcome.median:.1f} us"
        self.progress.update(self.task, advance=int(first), last=f"{outcome.candidate.variant.path.short} {done}")

    def stop(self) -> None:
        self.progress.stop()


def _winner_row(case: Case, result, ceilings) -> list[str]:
    w, r = result.winner, result.runner_up
    if w is None:
        return [result.problem.key, case.describe(), "none passed", "", "", "", "", "", ""]
    seconds = w.median * 1e-6
    tflops = case.flops / seconds / 1e12
    gbps = case.kv_bytes / seconds / 1e9
    default = next((o for o in result.outcomes if o.candidate == result.default and o.status == "ok"), None)
    vs_default = f"{default.median / w.median:.2f}x" if default is not None else "-"
    runner = f"{r.candidate.name} ({r.median:.1f} us)" if r else "-"
    return [result.problem.key, case.describe(), w.candidate.name,
            f"{w.median:.1f} ±{w.spread:.1f}", f"{tflops:.2f}", f"{gbps:.0f}",
            _fraction(ceilings, case, seconds, w.candidate.variant.path), vs_default, runner]


def cmd_tune(args) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .. import knobs
    from ..runtime import open_device
    from ..tune import Limits, tune
    from ..tunedb import TuningDB
    from ..variant import PathKind

    try:  # bad arguments are usage errors, refused before the GPU is touched
        chosen = chosen_cases(args, one_per_class=True)
        if chosen is None:
            args.suite = args.suite or "quick"
            cases, label = suite(args.suite, args.case), f"--suite {args.suite}"
        else:
            cases, label = chosen
        paths = tuple(PathKind.parse(p) for p in args.path) if args.path else None
        Limits(args.budget, args.max_evals, args.runs)
    except ValueError as exc:   # ModelError is one
        print(f"kgen tune: {exc}", file=sys.stderr)
        return 2
    dev = open_device(args.device)
    if args.budget is None and args.max_evals is None and dev.caps.device_type != "cpu":
        args.budget = GPU_CASE_BUDGET_S * len(cases)
    # Wide enough for the winners table when stdout is a file or a narrow terminal.
    out, err = Console(width=max(Console().width, 200)), Console(stderr=True)
    name = printable(dev.caps.name)   # the driver's words, printed, never obeyed
    err.print(f"kgen tune {label}: {len(cases)} case(s) on {name}; DB {knobs.db_path()}",
              markup=False, highlight=False)
    ceilings = None
    measured_at = time.monotonic()
    try:
        from ..timing.roofline import ceilings as measure_ceilings
        ceilings = measure_ceilings(dev)
    except ImportError:
        pass
    if (spent := time.monotonic() - measured_at) >= 1.0:   # measured now, cached per device after
        err.print(f"measured the device's roofline in {spent:.0f} s")
    start = time.monotonic()
    table = Table(title=Text(f"winners on {name}"))
    for column in ("class", "timed shape", "winner", "us (median ±IQR)", "TFLOPS", "GB/s K+V",
                   "% roofline", "vs default", "runner-up"):
        table.add_column(column)
    results = []
    with TuningDB() as db, db.lease():   # the lease: `kgen db reset` refuses while this runs
        for i, case in enumerate(cases):
            timed = case.fitted(dev.caps)
            budget = None
            if args.budget is not None:
                budget = max(1.0, (args.budget - (time.monotonic() - start)) / (len(cases) - i))
            result = tune(timed.paged_batch() if timed.page else timed.shapes(), db, device=args.device,
                          strategy=args.strategy,
                          limits=Limits(budget, args.max_evals, args.runs), paths=paths, progress=_Bar(err),
                          retry_crashed=args.retry_crashed)
            for o in result.wrong:
                reason = printable(o.reason.splitlines()[0]) if o.reason else ""   # may be an import's
                err.print(f"  rejected {o.candidate.name}: {o.status}: {reason}", markup=False, highlight=False)
            if result.resumed:
                err.print(f"  resumed {result.resumed} stored measurement(s)")
            err.print(f"  {case.name}: {result.seconds:.0f} s, {len(result.outcomes)} candidate(s)", markup=False)
            table.add_row(*_winner_row(timed, result, ceilings))
            results.append(result)
            if result.interrupted:
                break
    out.print(table)
    err.print(f"tuned in {time.monotonic() - start:.0f} s")
    if results and results[-1].interrupted:
        err.print("interrupted: what was measured is stored; run the same command again to resume")
        return 130
    if not any(r.winner for r in results):
        err.print(f"kgen tune: no class got a winner: {_why_none(results)}", markup=False, highlight=False)
        return 1
    return 0


def _why_none(results) -> str:
    """Each class's candidates by status, with the first reason given: why none passed."""
    parts = []
    for r in results:
        counts: dict[str, int] = {}
        for o in r.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        first = next((printable(o.reason.splitlines()[0]) for o in r.outcomes if o.reason.strip()), "")
        tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no candidate checked"
        parts.append(f"{r.problem.key}: {tally}" + (f" (first: {first[:160]})" if first else ""))
    return "; ".join(parts)


def register(sub) -> None:
    p = sub.add_parser("tune", help="autotune a suite of problem classes on a device (the main job)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES),
                   help="which shapes to tune (default: quick, unless --model or --shape picks them)" + OWN_DEFAULT)
    p.add_argument("--case", action="append", help="only cases whose name contains this (repeatable)")
    add_case_options(p)
    p.add_argument("--device", type=int, help="device index (see `kgen devices`); default: KGEN_DEVICE or the best")
    p.add_argument("--budget", type=float, help="wall-clock seconds for the whole suite "
                   f"(default on a GPU: {GPU_CASE_BUDGET_S} per case unless --max-evals is given)")
    p.add_argument("--max-evals", type=int, help="candidates checked and timed per class")
    p.add_argument("--strategy", default="auto", choices=("auto", "exhaustive", "random", "halving"),
                   help="auto: successive halving on a GPU, a seeded random sample on a CPU")
    p.add_argument("--runs", type=int, default=10, help="timed runs per candidate")
    p.add_argument("--path", action="append", help="only these paths (repeatable)")
    p.add_argument("--retry-crashed", action="store_true",
                   help="check again the candidates stored as crashing the process (their check died "
                   "with it twice) in the classes being tuned")
    p.set_defaults(func=cmd_tune)
