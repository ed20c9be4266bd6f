"""`kgen bench`: time a shape suite on a device, print a table, file the results as JSON (+ PNG)."""
from __future__ import annotations

import shlex
import sys

from ..tools import bench
from ..tools import model_report as model_charts
from ..tools.suites import SUITES, suite
from .files import read_json_option
from .model import MODEL_OPTIONS, add_case_options, chosen_cases, command_words, model_cases_in


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="time the dispatcher's kernels on a shape suite "
                              "(vs llama.cpp's and torch's figures)")
    p.add_argument("--suite", help=f"one of {', '.join(SUITES)} (h100-anchors: issue 7's anchors)")
    p.add_argument("--case", action="append", help="only cases whose name contains this (repeatable)")
    add_case_options(p)
    p.add_argument("--device", type=int, help="device index (see `kgen devices`; default: KGEN_DEVICE, "
                   "else the best GPU)")
    p.add_argument("--repeats", type=int, default=100, help=f"timed runs per case (1..{bench.REPEATS_MAX})")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (at least one per input copy)")
    p.add_argument("--json", metavar="FILE", help="write every figure here "
                   "(filed as benchmarks/results/<date>-<device>-<suite>.json)")
    p.add_argument("--png", metavar="FILE", help="bar chart of the results (needs --json and matplotlib)")
    p.add_argument("--no-torch", action="store_true", help="skip torch SDPA even where CUDA is available")
    p.add_argument("--plot", metavar="RESULTS.json", help="only draw the PNG of an earlier results file")
    p.add_argument("--paged", action="store_true", help="the paged KV kernels on issue 32's decode batches "
                   "(kgen.tools.paged_bench; --case picks among them)")
    p.add_argument("--quick", action="store_true", help="with --paged: the small batches, as a CPU device "
                   "always runs")
    p.add_argument("--cross", metavar="EXPORT.json", help="another device's `kgen db export`: each case run as "
                   "this device decides, then with that device's decision forced (kgen.tools.cross_matrix)")
    p.add_argument("--cross-device", metavar="KEY", help="with --cross: which of the export's devices "
                   "(its DeviceIdentity key), when it holds several")
    p.set_defaults(func=cmd_bench)


def command_of(args) -> str:
    """The command that reproduces this run, with every setting spelled out."""
    if args.paged:
        picked = ["--paged", *(["--quick"] if args.quick else [])]
        picked += [w for text in args.case or () for w in ("--case", text)]
    else:
        picked = ["--suite", args.suite] if args.suite else command_words(args)
    words = ["kgen", "bench", *picked, "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    for flag, value in (("--cross", args.cross), ("--cross-device", args.cross_device), ("--device", args.device),
                        ("--json", args.json), ("--png", args.png)):
        if value is not None:
            words += [flag, str(value)]
    if args.no_torch:
        words.append("--no-torch")
    return shlex.join(words)


def validate(args) -> tuple[tuple, str]:
    """Everything that can be wrong with the arguments, before any device is opened; the cases
    and a label for them. A bad --model, --shape or model option raises ModelError."""
    if args.cross_device and not args.cross:
        raise ValueError("--cross-device picks a device of a --cross export: give --cross EXPORT.json too")
    if args.paged or args.quick:
        if args.cross:
            raise ValueError("--cross: not with --paged (paged decisions are not tuned yet)")
        return _validate_paged(args)
    if args.plot:
        if args.suite or args.model or args.shape:
            raise ValueError("--plot redraws an earlier results file: give it without --suite")
        _check_results_file(args.plot)
        return (), ""
    chosen = chosen_cases(args, one_per_class=False)
    if chosen is None:
        if not args.suite:
            raise ValueError(f"--suite is required: one of {', '.join(SUITES)}; or --model, --shape")
        chosen = suite(args.suite, args.case), args.suite
    bench.check_counts(args.repeats, args.warmup)
    if args.png and not args.json:
        raise ValueError("--png draws from the results file: give --json FILE too")
    if args.cross:
        if args.png:
            raise ValueError("--png: not with --cross (its results are a table of pairs; --json FILE keeps them)")
        args.cross_doc = _cross_export(args.cross, args.cross_device)
    return tuple(chosen[0]), chosen[1]


def _cross_export(name: str, device_key: str | None) -> dict:
    """--cross's export, checked before any device is opened: a `kgen db export` document with
    one device (or the one --cross-device names)."""
    from ..tools.cross_matrix import device_of
    doc = read_json_option("--cross", name)
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), list) or not isinstance(doc.get("winners"), list):
        raise ValueError(f"--cross {name}: not a tuning export (as `kgen db export` writes: devices and winners)")
    device_of(doc, device_key)
    return doc


def _validate_paged(args) -> tuple[tuple, str]:
    """--paged's arguments; its cases are picked once the device says which sizes it runs."""
    from ..tools import paged_bench
    if not args.paged:
        raise ValueError("--quick picks the small batches of the paged suite: give --paged too")
    others = [flag for flag, given in (("--suite", args.suite), ("--model", args.model), ("--shape", args.shape),
                                       ("--plot", args.plot), ("--png", args.png)) if given]
    others += [flag for name, flag in MODEL_OPTIONS.items() if getattr(args, name) is not None]
    if others:
        raise ValueError(f"{', '.join(others)}: not with --paged, which runs its own batches (--case picks among them)")
    bench.check_counts(args.repeats, args.warmup)
    return paged_bench.pick(paged_bench.FULL, args.case), "paged"


def _check_results_file(name: str) -> None:
    """ValueError naming --plot unless `name` reads as a `kgen bench --json` results file."""
    doc = read_json_option("--plot", name)
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise ValueError(f"--plot {name}: not a results file (as `kgen bench --json FILE` writes)")


def cmd_bench(args) -> int:
    try:
        cases, label = validate(args)
    except ValueError as exc:   # ModelError too: a usage error, before any device is opened
        print(f"kgen bench: {exc}", file=sys.stderr)
        return 2
    if args.paged:
        return cmd_paged(args)
    if args.cross:
        return cmd_cross(args, cases, label)
    if args.plot:
        png = bench.plot(args.plot, args.png, draw=model_charts.draw_results)
        print(f"wrote {png}")
        return 0
    from rich.console import Console
    from ..runtime import open_device
    # Logs (no terminal) get a wide table rather than one folded into 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 220)

    def say(message: str, **kw) -> None:
        console.print(message, markup=False, highlight=False, **kw)

    dev = open_device(args.device)
    say(f"kgen bench {label}: {len(cases)} case(s) on {dev.caps.name} "
        f"({args.repeats} runs each, median GPU time)")
    roofline = bench.ceilings_of(dev)
    if isinstance(roofline, str):
        say(f"roofline: {roofline}")
    results = []
    for i, case in enumerate(cases, 1):
        say(f"[{i}/{len(cases)}] {case.name}: {case.fitted(dev.caps).describe()} ...", end=" ")
        r = bench.bench_case(case, dev, repeats=args.repeats, warmup=args.warmup, roofline=roofline,
                             torch=not args.no_torch)
        say(r.error or f"{r.gpu.median_us:.1f} us, {r.tflops:.3g} TFLOPS, NMSE "
            + ("-" if r.check.nmse is None else f"{r.check.nmse:.1e}"))
        results.append(r)
    console.print(table(results))
    for r in results:
        notes = [n for n in (r.torch_note and f"torch {r.torch_note}", r.roofline_note) if n]
        say(f"  {r.case}: {r.variant or '-'} ({r.chosen_by or 'not planned'})" + "".join(f"; {n}" for n in notes))
    report = model_report(args, cases, results, dev, roofline, say, console)
    if args.json:
        path = bench.write_json(results, args.json, caps=dev.caps, command=command_of(args),
                                suite=label, roofline=roofline, model_report=report and report.document())
        say(f"wrote {path}")
        if args.png:
            try:
                say(f"wrote {bench.plot(path, args.png, draw=model_charts.draw_results)}")
            except (bench.PlotUnavailable, bench.NothingToPlot) as exc:
                say(f"PNG skipped: {exc}")
    runs = [(r, r.case) for r in results]
    runs += [(r, f"{r.case} (heuristic default)") for r in (report.timed_apart if report else ())]
    failed = [name for r, name in runs if r.error or (r.check is not None and r.check.ok is False)]
    if failed:
        print(f"kgen bench: {len(failed)} run(s) failed or gave wrong output: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def cmd_paged(args) -> int:
    """`kgen bench --paged`: the paged suite at the issue's sizes on a GPU, the small ones on a
    CPU device or with --quick; the text table, and every figure in --json FILE."""
    from ..runtime import open_device
    from ..tools import paged_bench
    dev = open_device(args.device)
    small = args.quick or dev.caps.device_type == "cpu"
    cases = paged_bench.pick(paged_bench.SMALL if small else paged_bench.FULL, args.case)
    copy = paged_bench.copy_bandwidth(dev)
    print(f"kgen bench --paged: {len(cases)} case(s), {'small' if small else 'full'} sizes, on {dev.caps.name} "
          f"({args.repeats} runs each, median GPU time); copy bandwidth "
          + ("n/a" if copy[0] is None else f"{copy[0]:.1f} GB/s") + f" ({copy[1]})", flush=True)
    position = {case.name: i for i, case in enumerate(cases, 1)}

    def progress(case, r) -> None:
        if r is None:
            print(f"[{position[case.name]}/{len(cases)}] {case.name}: {case.describe()} ...", end=" ", flush=True)
        else:
            print(r["error"] or f"{r['gpu']['median_us']:.1f} us, {r['kv_gbps']:.4g} GB/s, "
                  f"NMSE {r['check']['nmse']:.1e}", flush=True)

    results = paged_bench.run(cases, dev, repeats=args.repeats, warmup=args.warmup, progress=progress,
                              torch=not args.no_torch, copy=copy)
    print(paged_bench.table(results))
    if args.json:
        path = paged_bench.write_json(results, args.json, caps=dev.caps, command=command_of(args), copy=copy,
                                      sizes="small" if small else "full")
        print(f"wrote {path}")
    failed = paged_bench.failures(results)
    if failed:
        print(f"kgen bench: {len(failed)} case(s) failed or gave wrong output: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def cmd_cross(args, cases, label) -> int:
    """`kgen bench --cross EXPORT.json`: each case as this device decides, then with the export
    device's decision forced; a table of the pairs, their geometric-mean ratio, --json FILE."""
    import datetime
    import math
    from ..identity import BuildIdentity, DeviceIdentity
    from ..runtime import open_device
    from ..tools import cross_matrix
    doc = args.cross_doc
    other = cross_matrix.device_of(doc, args.cross_device)
    dev = open_device(args.device)
    if DeviceIdentity.of(dev.caps).key == other.get("key"):
        print(f"kgen bench: --cross {args.cross}: its device {other.get('name')} is this device; pass another "
              "device's export", file=sys.stderr)
        return 2
    refused = cross_matrix.refused_here(doc, dev.caps)
    print(f"kgen bench --cross: {len(cases)} case(s) of {label} on {dev.caps.name}, beside {other.get('name')}'s "
          f"decisions ({args.repeats} runs each, median GPU time); this device's dispatcher "
          + ("refuses them all (another device's decisions), so they are timed by force" if refused else
             "takes some of them: the export shares this device's identity"), flush=True)
    roofline = bench.ceilings_of(dev)

    def progress(case, which, r) -> None:
        if r is None:
            print(f"{case.name} ({which}) ...", end=" ", flush=True)
        else:
            print(r.error or f"{r.gpu.median_us:.1f} us ({r.variant})", flush=True)

    rows = cross_matrix.cross(list(cases), doc, dev, device_key=args.cross_device, repeats=args.repeats,
                              warmup=args.warmup, roofline=roofline,
                              progress=progress)
    print(cross_table(rows, other.get("name", "?")))
    ratios = [r.foreign_over_own for r in rows if r.foreign_over_own]
    geomean = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None
    print(f"{other.get('name')}'s decisions here: " + (f"{geomean:.3f}x this device's own time "
          f"(geometric mean of {len(ratios)} case(s); > 1: per-device tuning pays)" if geomean else "no pair timed"))
    if args.json:
        path = bench.write_document({
            "command": command_of(args),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "suite": label, "device": DeviceIdentity.of(dev.caps).as_dict() | {"name": dev.caps.name},
            "build": BuildIdentity.current().as_dict(), "foreign_device": other,
            "refused_by_dispatcher": refused, "foreign_over_own_geomean": geomean,
            "rows": [r.as_dict() for r in rows]}, args.json)
        print(f"wrote {path}")
    runs = [(r.own, f"{r.case.name} (own)") for r in rows] + [(r.foreign, f"{r.case.name} (foreign)")
                                                              for r in rows if r.foreign is not None]
    failed = [name for r, name in runs if r.error or (r.check is not None and r.check.ok is False)]
    if failed:
        print(f"kgen bench: {len(failed)} run(s) failed or gave wrong output: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def cross_table(rows, other: str) -> str:
    """One line per case: this device's time and kernel, the other device's decision forced here."""
    lines = [f"| case | class | own us | own kernel | {other} us | {other}'s kernel (its class) | ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r.as_dict()
        fmt = lambda us: "-" if us is None else f"{us:.1f}"
        lines.append(f"| {d['case']} | {d['class']} | {fmt(d['own_us'])} | {d['own_variant'] or '-'} | "
                     f"{fmt(d['foreign_us'])} | {d['foreign_variant'] or '-'} ({d['foreign_class'] or '-'}) | "
                     + (f"{d['foreign_over_own']:.2f}x" if d["foreign_over_own"] else "-")
                     + (f" {d['note']}" if d["note"] else "") + " |")
    return "\n".join(lines)


def model_report(args, cases, results, dev, roofline, say, console) -> "object | None":
    """With --model: each of its classes' heuristic default timed beside the dispatcher's run
    (`results`), the per-class table and the per-step totals printed; the
    kgen.tools.model_report.Report, or None without --model."""
    from ..tools import model_report as mr
    picked = model_cases_in(args, cases)
    if picked is None:
        return None
    model, model_cases = picked
    by_case = dict(zip(cases, results))

    def progress(case, r) -> None:
        if r is None:
            say(f"[default] {case.name}: heuristic default ...", end=" ")
        else:
            say(r.error or f"{r.gpu.median_us:.1f} us ({r.path} x{r.splits} {r.variant})")

    timings = mr.time_defaults([(mc, by_case[mc.case]) for mc in model_cases], dev, repeats=args.repeats,
                               warmup=args.warmup, roofline=roofline, progress=progress)
    report = mr.Report.of(model, timings)
    console.print(mr.table(model, timings))
    for line in mr.summary_lines(model, report.steps):
        say(line)
    return report


def _f(x, fmt: str, none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def table(results: list) -> "object":
    """A rich Table of the figures bench reports (every figure is in the JSON too)."""
    from rich.markup import escape
    from rich.table import Table
    sets = max((r.gpu.sets for r in results if r.gpu), default=1)
    t = Table(title="kgen bench: GPU time of one run, median and p10-p90 over the timed runs"
              + (f" (inputs rotated over up to {sets} copies)" if sets > 1 else ""))
    for col in ("case", "shape run", "path x splits", "GPU us", "p10-p90", "TFLOPS", "K+V GB/s", "% roof",
                "% copy", "vs llama.cpp", "vs torch (ref)", "torch us (run)", "target us", "NMSE",
                "host: plan ms / call ms / run +us"):
        t.add_column(col, overflow="fold")
    for r in results:
        if r.error:
            t.add_row(r.case, r.shape, f"{r.path} x{r.splits}" if r.path else "-", f"[red]{escape(r.error)}[/red]")
            continue
        g, c = r.gpu, r.check
        target = "-" if r.target_us is None else f"{r.target_us:g} " + {
            True: "[green]met[/green]", False: "[red]missed[/red]", None: "(H100 only)"}[r.meets_target]
        nmse = c.scope if c.nmse is None else (f"{c.nmse:.1e}" + ("" if c.ok else " [red]WRONG[/red]")
                                                + ("" if c.scope == "full" else " (sub)"))
        torch = (f"{r.torch_us:.1f} ({_ratio(r.vs_torch)})" if r.torch_us else "n/a" if r.torch_note else "-")
        t.add_row(r.case, r.shape, f"{r.path} x{r.splits}", f"{g.median_us:.1f}", f"{g.p10_us:.1f}-{g.p90_us:.1f}",
                  f"{r.tflops:.3g}", f"{r.kv_gbps:.4g}", _f(r.roofline_pct, ".0f", "n/a"),
                  _f(r.copy_pct, ".0f", "n/a"), _ratio(r.vs_reference.get("llama.cpp")),
                  _ratio(r.vs_reference.get("torch")), torch, target, nmse,
                  f"{r.host['plan_ms']:.1f} / {r.host['call_ms']:.1f} / {r.host['run_overhead_us']:.0f}")
    return t


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"
