"""Time candidates of one suite case pass by pass (attention kernel, split-k reduce), checked first.

    python lab/pass_sweep.py "P4" [--splits 32,64,128] [--match REGEX] [--path scalar] [--limit 40]

Every candidate of the case's class whose name matches each --match regex (all split
counts the tuner would try, or only --splits) is checked against the float64 reference on the
tuner's small problem (unless --no-check), then timed on the case's full shape: runs back to back after warm-up,
rotating input copies, median GPU microseconds per pass. The passes before the kernel (kv_f16,
mask and Q fragments, mask tiles) run side by side as one group: its time is printed for the
first of them, 0.0 for the others. A development tool for the kernel
design work of #7; `kgen tune` and `kgen bench` are the figures to quote.
"""
import argparse
import dataclasses
import re
import statistics
import sys

from kgen.shapes import fold_gqa
from kgen.planning.plan import Plan
from kgen.timing import step_times, time_back_to_back, warm_up
from kgen.tools.suites import case_arg
from kgen.tune import Candidate, candidates
from kgen.tune.measure import WARMUP_GPU_US, GpuEvaluator
from kgen.variant import PathKind


def time_passes(ev: GpuEvaluator, c: Candidate, runs: int) -> list[list[float]]:
    """Per-run GPU microseconds of each pass of the plan, back to back in one submission."""
    x = ev.inputs
    plans = []
    try:
        for _ in range(ev.copies):
            plan = Plan(ev.timed, variant=c.variant, split_k=c.splits, device=ev.device)
            plans.append(plan)
            plan.upload(x.q, x.k, x.v, mask=x.mask, sinks=x.sinks)
        # The first warm-up of the process lasts long enough to set the clock reference.
        warm_up(plans, WARMUP_GPU_US)
        times = step_times(plans, runs)
        n = len(plans[0].steps)
        return [times[i::n] for i in range(n)]
    finally:
        for plan in plans:
            plan.close()
        if plans:
            plans[0].device.drop_pipeline(plans[0].kernel)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("case", type=case_arg("all"))
    ap.add_argument("--splits", default="")
    ap.add_argument("--match", action="append", default=[])
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--sentinel", action="store_true",
                    help="time the default's long-lived plans after each candidate (last column)")
    ap.add_argument("--also", action="append", default=[], help="a candidate name to time too")
    ap.add_argument("--no-check", action="store_true",
                    help="time without the reference check (an experiment kernel that leaves out "
                         "part of the work on purpose, to measure what that part costs)")
    ap.add_argument("--path", action="append", default=[],
                    help="search only these paths (scalar, coopmat1, coopmat2), the scalar space too: "
                         "the tuner offers only the scalar default on matrix hardware")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="change a field of the case, e.g. precision=f16 or mask=false")
    args = ap.parse_args()
    case = args.case
    for change in args.set:
        name, _, text = change.partition("=")
        old = getattr(case, name)  # AttributeError names an unknown field
        value = text.lower() in ("1", "true", "yes") if isinstance(old, bool) else type(old)(text)
        case = dataclasses.replace(case, **{name: value})
    shapes = fold_gqa(case.shapes())
    ev = GpuEvaluator(shapes)
    from kgen.runtime import open_device
    paths = tuple(PathKind.parse(p) for p in args.path) or None
    cands, default = candidates(shapes, open_device().caps, paths)
    want = {int(s) for s in args.splits.split(",") if s}
    chosen = [c for c in cands if all(re.search(m, c.name) for m in args.match)
              and (not want or c.splits in want)][:args.limit]
    chosen += [Candidate.parse(name) for name in args.also]
    if default not in chosen:
        chosen.insert(0, default)
    sentinel = None
    if args.sentinel:
        # The default's plans, kept alive with their buffers and timed after every candidate:
        # does a slowdown follow the process or only new allocations?
        x = ev.inputs
        sentinel = [Plan(ev.timed, variant=default.variant, split_k=default.splits) for _ in range(ev.copies)]
        for p in sentinel:
            p.upload(x.q, x.k, x.v, mask=x.mask, sinks=x.sinks)
        warm_up(sentinel, WARMUP_GPU_US)
    print(f"{case.name}: {len(chosen)} candidates; flops {case.flops:.3g}, K+V bytes {case.kv_bytes:.3g}",
          flush=True)
    for c in chosen:
        outcome = None if args.no_check else ev.check(c)
        if outcome is not None and outcome.status != "ok":
            print(f"{c.name}\t{outcome.status}\t{outcome.reason}", flush=True)
            continue
        try:
            passes = time_passes(ev, c, args.runs)
        except Exception as exc:  # a development sweep goes on past one broken candidate
            print(f"{c.name}\tfailed\t{type(exc).__name__}: {exc}"[:300], flush=True)
            continue
        med = [statistics.median(p) for p in passes]
        total = sum(med)
        if sentinel is not None:
            med.append(statistics.median(time_back_to_back(sentinel, args.runs)))
        print(f"{c.name}\t{total:.1f}\t" + "\t".join(f"{m:.1f}" for m in med)
              + f"\t{case.kv_bytes / total / 1e3:.0f} GB/s\t{case.flops / total / 1e6:.1f} TFLOPS",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
