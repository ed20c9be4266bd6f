"""The driver's statistics (registers, spills, shared memory) of each candidate's attention kernel.

    python lab/pipeline_stats.py "P1 " [--match REGEX] [--uri URI] [--json FILE]

Takes the candidates the tuner would try for the suite case (as lab/pass_sweep.py does),
keeps those whose variant uri matches every --match regex, adds each --uri, and builds each one's
plan on the tuner's small check problem of the case, on a device opened with
capture_statistics=True. Nothing runs. Prints one line per variant: its uri, then every
statistic the driver reports for the attention kernel (VK_KHR_pipeline_executable_properties;
a device without it is refused with the reason).

NVIDIA 580 on the H100 reports Register Count, Binary Size, Stack Size, Local Memory Size (per
thread: spills) and Shared Memory Size, all in bytes but the first. Its Local Memory Size has
bit 36 set on every kernel, a trivial one included; the bits below it look like the bytes
(0 for P1's regs1 kernels, 320 for its cm2 default, at 255 registers).
"""
import argparse
import json
import re
import sys

from kgen.shapes import fold_gqa
from kgen.planning.plan import Plan
from kgen.runtime.context import Device
from kgen.runtime.pipeline_stats import statistics_problem
from kgen.tools.suites import case_arg
from kgen.tune import Candidate, candidates
from kgen.tune.measure import check_shapes, failure_types


def chosen(shapes, caps, matches: list[str], uris: list[str]) -> list[Candidate]:
    """One candidate per variant uri (split counts share one kernel), the --uri ones last."""
    found: dict[str, Candidate] = {}
    for c in candidates(shapes, caps)[0]:
        if all(re.search(m, c.variant.uri) for m in matches):
            found.setdefault(c.variant.uri, c)
    for uri in uris:
        c = Candidate.parse(uri)
        found.setdefault(c.variant.uri, c)
    return list(found.values())


def kernel_statistics(dev: Device, shapes, c: Candidate) -> dict:
    """Build the candidate's plan on the check problem and read its attention kernel."""
    with Plan(check_shapes(shapes, c), variant=c.variant, split_k=c.splits, device=dev) as plan:
        stats = plan.kernel.statistics()
    dev.drop_pipeline(plan.kernel)  # a long list must not keep every pipeline alive
    return stats


def compact(stats: dict) -> str:
    return "  ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                     for name, value in stats.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("case", type=case_arg("all"), help="a substring of a case name of suite 'all', e.g. 'P1 '")
    ap.add_argument("--match", action="append", default=[], metavar="REGEX",
                    help="keep candidates whose variant uri matches (repeatable: all must match)")
    ap.add_argument("--uri", action="append", default=[], help="a variant uri to add (repeatable)")
    ap.add_argument("--json", metavar="FILE", help="also write the statistics as JSON")
    ap.add_argument("--device", type=int, default=None, help="device index (default: KGEN_DEVICE)")
    args = ap.parse_args()
    case = args.case
    shapes = fold_gqa(case.shapes())
    with Device(args.device, capture_statistics=True) as dev:
        if (reason := statistics_problem(dev)) is not None:
            print(f"no pipeline statistics: {reason}", file=sys.stderr)
            return 1
        variants = chosen(shapes, dev.caps, args.match, args.uri)
        print(f"{case.name} on {dev.caps.name} ({dev.caps.driver_info}): {len(variants)} variants", flush=True)
        results, failures = {}, {}
        for c in variants:
            try:
                results[c.variant.uri] = stats = kernel_statistics(dev, shapes, c)
            except failure_types() as exc:
                failures[c.variant.uri] = reason = f"{type(exc).__name__}: {exc}"[:300]
                print(f"{c.variant.uri}\tfailed\t{reason}", flush=True)
                continue
            print(f"{c.variant.uri}\t{compact(stats)}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"case": case.name, "device": dev.caps.name, "driver": dev.caps.driver_info,
                           "statistics": results, "failed": failures}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
