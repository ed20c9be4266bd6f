"""Helpers the lab scripts share: argument types and one warm-up-then-median timer."""
from __future__ import annotations

import argparse
import statistics

from kgen.tools.suites import Case, case_arg


def int_list_arg(least: int):
    """The argparse type of a script's list option: comma-separated integers, each at least
    `least`; anything else is refused naming the text and the limit."""
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v]
        except ValueError:
            values = []
        if not values or min(values) < least:
            raise argparse.ArgumentTypeError(f"{text!r}: comma-separated integers of at least {least}")
        return values
    return parse


def bench_parser(description: str, case_help: str, lists: tuple, runs: int) -> argparse.ArgumentParser:
    """The parser of a benchmark script over one h100-anchors case: the case, list options given
    as (name, default, least, help) (comma-separated integers, each at least `least`), and
    --runs (at least 1)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("case", type=case_arg("h100-anchors"), help=case_help)
    for name, default, least, text in lists:
        ap.add_argument("--" + name, default=default, type=int_list_arg(least), help=text)
    ap.add_argument("--runs", type=lambda t: int_list_arg(1)(t)[0], default=runs, help="timed runs per kernel")
    return ap


SCRIPT_WARM_US = 300_000  # GPU time a benchmark script's kernel runs before it is timed


def warm_median(seq) -> float:
    """Median GPU microseconds per step of recorded sequence `seq` (Device.sequence), after
    running it back to back for SCRIPT_WARM_US of GPU time: compiling a kernel idles the GPU,
    and its clock drops meanwhile."""
    spent = 0.0
    while spent < SCRIPT_WARM_US:
        spent += sum(seq.run(wait=True))
    return statistics.median(seq.run(wait=True))


def require_f16_kv(ap: argparse.ArgumentParser, case: Case, script: str) -> None:
    """Refuse (through argparse, naming the case) a case whose K or V is not f16: the benchmark
    scripts' own kernels read f16 K and V (MLA's V is K's)."""
    if case.k_type != "f16" or (case.v_type != "f16" and not case.mla):
        ap.error(f"{case.name}: the {script} kernel reads f16 K and V only")


def require_workgroups_fit(ap: argparse.ArgumentParser, caps, wgs: list[int]) -> None:
    """Refuse (through argparse) a --wg the device cannot run, before any kernel is built."""
    if max(wgs) > caps.max_workgroup_invocations:
        ap.error(f"--wg {max(wgs)}: {caps.name} runs at most {caps.max_workgroup_invocations} threads per workgroup")
