"""One table per FLASH_ATTN_EXT case from check.sh's four runs: ggml's verdict with kgen on and
off (test mode), who served the call (kgen's kernel, or why it fell back), and in perf mode ggml
us, kgen-in-ggml us and their ratio.

    python3 integrations/ggml/report.py OUTDIR   (reads test-kgen.txt, test-ggml.txt, perf-kgen.txt, perf-ggml.txt)
"""
from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

CASE = re.compile(r"^\s*FLASH_ATTN_EXT\((?P<params>.*?)\): ")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_verdicts(path: Path) -> dict[str, tuple[str, str]]:
    """{case params: (OK / FAIL / not supported, kgen's word on it)} from a console test run
    with GGML_VK_KGEN_LOG=2: kgen's line of a call comes before the line test-backend-ops
    prints for its case (the case's name and verdict are written once it has run)."""
    out: dict[str, tuple[str, str]] = {}
    params, said, pending = None, "", ""
    for raw in (path.read_text(errors="replace") if path.exists() else "").splitlines():
        line = ANSI.sub("", raw)
        if line.startswith("kgen: ") and " call(s) served by kgen" not in line:
            pending = pending or line[len("kgen: "):].strip()
            continue
        m = CASE.match(line)
        if m:
            params, said, pending, line = m["params"], pending, "", line[m.end():]
        if params is None:
            continue
        for verdict in ("OK", "FAIL", "not supported"):
            if verdict in line:
                out[params] = (verdict, said)
                params = None
                break
    return out


PERF = re.compile(r"^\s*FLASH_ATTN_EXT\((?P<params>.*?)\):\s+(?P<runs>\d+) runs - +(?P<us>[0-9.]+) us/run")


def perf_times(path: Path) -> dict[str, float]:
    """{case params: us per run} from a console perf run ("N runs - X us/run - ...")."""
    if not path.exists():
        return {}
    found = (PERF.match(ANSI.sub("", line)) for line in path.read_text(errors="replace").splitlines())
    return {m["params"]: float(m["us"]) for m in found if m}


def main(folder: Path) -> int:
    on, off = test_verdicts(folder / "test-kgen.txt"), test_verdicts(folder / "test-ggml.txt")
    print("| case | kgen on | kgen off | served by |")
    print("|---|---|---|---|")
    for params, (verdict, said) in on.items():
        print(f"| {params} | {verdict} | {off.get(params, ('-',))[0]} | {said or '-'} |")
    served = Counter("kgen" if s.startswith("served") else (s if s else "not reached (ggml refused the case)")
                     for _, s in on.values())
    print(f"\ntest mode: {len(on)} cases; kgen on: {Counter(v for v, _ in on.values())}; "
          f"kgen off: {Counter(v for v, _ in off.values())}")
    print("served: " + ", ".join(f"{who} {n}" for who, n in served.most_common()))
    kg, gg = perf_times(folder / "perf-kgen.txt"), perf_times(folder / "perf-ggml.txt")
    if kg and gg:
        print("\n| perf case | ggml us | kgen-in-ggml us | ggml / kgen |")
        print("|---|---|---|---|")
        for params in gg:
            if params in kg:
                print(f"| {params} | {gg[params]:.1f} | {kg[params]:.1f} | {gg[params] / kg[params]:.2f}x |")
    failed = sum(v == "FAIL" for v, _ in on.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
