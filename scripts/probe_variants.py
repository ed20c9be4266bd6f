"""Check candidates of a suite's classes one per subprocess, so that a driver crash (SIGSEGV in
pipeline creation or a lost device) is pinned on its variant instead of ending a tune.

    python scripts/probe_variants.py --suite quick [--path coopmat2] [--jobs 4] > probe.tsv

Prints one line per candidate: class, candidate, result (ok / wrong / failed / crash:<signal>), detail.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import sys

CHILD = """
import faulthandler, sys
faulthandler.enable()
from kgen.tools.suites import suite
from kgen.tune import Candidate
from kgen.tune.measure import GpuEvaluator
case = suite(sys.argv[1])[int(sys.argv[2])]
o = GpuEvaluator(case.shapes()).check(Candidate.parse(sys.argv[3]))
print("RESULT", o.status, (o.reason or "").splitlines()[0][:200] if o.reason else f"nmse={o.nmse:.2g}")
"""


def probe(suite_name: str, index: int, name: str) -> tuple[str, str]:
    run = subprocess.run([sys.executable, "-c", CHILD, suite_name, str(index), name],
                         capture_output=True, text=True, timeout=300)
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            _, status, detail = (line.split(" ", 2) + [""])[:3]
            return status, detail
    where = [l.strip() for l in run.stderr.splitlines() if l.strip().startswith("File")][:3]
    return f"crash:{run.returncode}", " | ".join(where) or run.stderr.strip()[-200:]


def main() -> int:
    from kgen.runtime import open_device
    from kgen.tools.suites import suite
    from kgen.tune import candidates
    from kgen.variant import PathKind
    p = argparse.ArgumentParser()
    p.add_argument("--suite", default="quick")
    p.add_argument("--path", action="append")
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--limit", type=int, help="candidates per class (default: all)")
    args = p.parse_args()
    caps = open_device(None).caps
    paths = tuple(PathKind.parse(x) for x in args.path) if args.path else None
    work = []
    for i, case in enumerate(suite(args.suite)):
        cands, _ = candidates(case.fitted(caps).shapes(), caps, paths)
        work += [(args.suite, i, c.name, case.problem().key) for c in cands[:args.limit]]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(probe, s, i, n): (key, n) for s, i, n, key in work}
        for f in concurrent.futures.as_completed(futures):
            key, name = futures[f]
            status, detail = f.result()
            print(f"{key}\t{name}\t{status}\t{detail}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
