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


def console_cases(path: Path):
    """(case params, kgen's word on its calls, the rest of its lines) per case of a console run
    with GGML_VK_KGEN_LOG=2: kgen's line of a call comes before the line test-backend-ops prints
    for its case (a case's name and result are written once it has run)."""
    params, said, pending, rest = None, "", "", ""
    for raw in (path.read_text(errors="replace") if path.exists() else "").splitlines():
        line = ANSI.sub("", raw)
        if line.startswith("kgen: ") and " call(s) served by kgen" not in line:
            pending = pending or line[len("kgen: "):].strip()
            continue
        m = CASE.match(line)
        if m:
            if params is not None:
                yield params, said, rest
            params, said, pending, rest = m["params"], pending, "", line[m.end():]
        elif params is not None:
            rest += "\n" + line
    if params is not None:
        yield params, said, rest


def test_verdicts(path: Path) -> dict[str, tuple[str, str]]:
    """{case params: (OK / FAIL / not supported, kgen's word on it)} from a console test run."""
    out: dict[str, tuple[str, str]] = {}
    for params, said, rest in console_cases(path):
        verdict = next((v for v in ("OK", "FAIL", "not supported") if v in rest), None)
        if verdict is not None:
            out[params] = (verdict, said)
    return out


PERF = re.compile(r"^\s*(?P<runs>\d+) runs - +(?P<us>[0-9.]+) us/run")


def perf_times(path: Path) -> dict[str, tuple[float, str]]:
    """{case params: (us per run, kgen's word on it)} from a console perf run ("N runs - X us/run - ...")."""
    out = {}
    for params, said, rest in console_cases(path):
        m = PERF.match(rest)
        if m:
            out[params] = (float(m["us"]), said)
    return out


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
        print("\n| perf case | ggml us | kgen-in-ggml us | ggml / kgen | served by |")
        print("|---|---|---|---|---|")
        for params, (ggml_us, _) in gg.items():
            if params in kg:
                kgen_us, said = kg[params]
                print(f"| {params} | {ggml_us:.1f} | {kgen_us:.1f} | {ggml_us / kgen_us:.2f}x | {said or '-'} |")
        served = Counter("kgen" if said.startswith("served") else (said or "-") for _, said in kg.values())
        print("\nperf served: " + ", ".join(f"{who} {n}" for who, n in served.most_common()))
    failed = sum(v == "FAIL" for v, _ in on.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
