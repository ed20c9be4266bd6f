"""Diagnose a timing disagreement between the tuner and kgen bench on one case: time the same
candidate through the tuner's evaluator (separate K and V buffers) and through bench (MLA's V a
view of K), alternately, in one process.

    python lab/diag_timing.py "P4 decode MLA" fa_cm1_...@64 [CHURN_CASE N]

With CHURN_CASE and N, N of that case's candidates are timed between the rounds (N < 0: its
default |N| times, so buffers churn but no new pipelines appear), as a long tune does: does the
first case's timing change after?
"""
import statistics
import sys

from kgen.shapes import fold_gqa
from kgen.tools.bench import bench_case
from kgen.tools.suites import suite
from kgen.tune import Candidate
from kgen.tune.measure import GpuEvaluator


def main() -> None:
    case = suite("h100-anchors", [sys.argv[1]])[0]
    cand = Candidate.parse(sys.argv[2])
    ev = GpuEvaluator(fold_gqa(case.shapes()))
    churn = suite("h100-anchors", [sys.argv[3]])[0] if len(sys.argv) > 4 else None
    for round_ in range(2):
        tuner = statistics.median(ev.time(cand, 30))
        r = bench_case(case, repeats=30, roofline="n/a", torch=False)
        print(f"round {round_}: tuner {tuner:.1f} us ({ev.copies} copies), bench {r.gpu.median_us:.1f} us "
              f"({r.variant}@{r.splits}, {r.gpu.sets} copies)", flush=True)
        if churn is not None and round_ == 0:
            other = GpuEvaluator(fold_gqa(churn.shapes()))
            from kgen.tune import candidates
            from kgen.runtime import open_device
            cands, _ = candidates(fold_gqa(churn.shapes()), open_device().caps)
            n = int(sys.argv[4])
            # N > 0: N different candidates (new pipelines); N < 0: the default |N| times (buffers only)
            for c in (cands[:n] if n > 0 else [cands[0]] * -n):
                other.time(c, 3)
            print(f"churned {n} candidate timings of {churn.name}", flush=True)


if __name__ == "__main__":
    main()
