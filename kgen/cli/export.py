"""`kgen export`: the tuning winners' SPIR-V and dispatch table, for a C/C++ Vulkan engine."""
from __future__ import annotations

import sys
from pathlib import Path

from .. import knobs
from ..tools.export import FORMATS, ExportError, export


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write the tuned kernels and their dispatch table "
                              "(JSON + .spv files, one C header, or a C dispatcher) for embedding")
    p.add_argument("--format", choices=FORMATS, required=True,
                   help="json: DIR/kgen_dispatch.json + DIR/spirv/*.spv; c-header: the table, DIR/kgen_fa_table.h; "
                        "c: a dispatcher, DIR/kgen_fa.h + DIR/kgen_fa.c")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--device-key", metavar="K", help="only this device (its DeviceIdentity key)")
    p.add_argument("--db", metavar="PATH", help="tuning DB (default: KGEN_DB or ~/.cache/kgen/tuning.sqlite)")
    p.add_argument("--all-builds", action="store_true",
                   help="also winners tuned by other kgen builds (default: the current build only)")
    p.add_argument("--cover", choices=sorted(COVER_SETS),
                   help="also every class of this case set that has no tuned winner, with kgen's heuristic "
                        "default for the device opened here (ggml: test-backend-ops' FLASH_ATTN_EXT cases)")
    p.add_argument("--paged", action="append", default=[], metavar="SPEC",
                   help="also paged KV entries (json and c formats): SPEC is Dk,Dv,k_type,v_type,page[,feature...] "
                        "with features of causal, softcap, sinks (a window is causal with a run-time width), e.g. "
                        "128,128,f16,f16,16,causal; kgen's heuristic paged kernel per query-row and capacity "
                        "bucket for the device opened here (paged kernels are not tuned yet); repeatable")
    p.add_argument("--device", type=int, help="with --cover, --model or --paged: device index (see `kgen devices`); "
                   "default: KGEN_DEVICE or the best")
    from .model import add_case_options
    add_case_options(p)   # --model/--shape: cover that model's classes as --cover does a case set
    p.set_defaults(func=cmd_export, suite=None, case=None)


def _ggml_cases():
    from ..tools.ggml_cases import eval_cases
    return eval_cases()


COVER_SETS = {"ggml": _ggml_cases}


def cmd_export(args) -> int:
    from ..models import ModelError
    from ..tools.export import PagedSpec
    from .model import chosen_cases
    try:   # before any device is opened
        picked = chosen_cases(args, one_per_class=True)
        specs = [PagedSpec.parse(text) for text in args.paged]
    except (ModelError, ValueError) as exc:
        print(f"kgen export: {exc}", file=sys.stderr)
        return 2
    if specs and args.format == "c-header":
        print("kgen export: --paged: the c-header format carries dense entries only; use --format c or json",
              file=sys.stderr)
        return 2
    db = Path(args.db) if args.db else knobs.db_path()
    try:
        entries = read_winners(db, device_key=args.device_key, all_builds=args.all_builds)
    except ExportError as exc:
        if not args.cover and picked is None:
            if specs:
                raise ExportError(f"{exc}; --paged entries go beside dense ones (kgen tune, or --cover or "
                                  "--model for heuristic dense entries)") from None
            raise
        entries = []   # defaults alone
    if args.cover:
        entries += cover(entries, args.cover, args.device)
    if picked is not None:
        entries += cover(entries, picked[1], args.device, cases=[c.shapes() for c in picked[0]])
    paged = []
    if specs:
        from ..planning.probe import open_for_kernels
        from ..tools.export import paged_rows
        paged = paged_rows(specs, open_for_kernels(args.device).caps)
    written = export(entries, Path(args.out), args.format, paged)
    devices = len({d.key for d, _, _ in entries} | {r.device.key for r in paged})
    print(f"kgen export: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
          + (f" and {len(paged)} paged entr{'y' if len(paged) == 1 else 'ies'} ({len(specs)} spec(s), heuristic "
             "defaults)" if paged else "")
          + f" for {devices} device(s), {len(written)} file(s) in {args.out}")
    return 0


def read_winners(db_path: Path, *, device_key: str | None, all_builds: bool) -> list:
    from ..identity import BuildIdentity, is_current
    from ..tunedb import TuningDB
    if not db_path.is_file():
        raise ExportError(f"no tuning DB at {db_path}: run `kgen tune` first (or pass --db)")
    db = TuningDB(db_path)
    try:
        entries = db.winners(None, None if all_builds else BuildIdentity.current())
    finally:
        db.close()
    which = "" if all_builds else " for this kgen build (--all-builds for older ones)"
    if not all_builds:
        # A winner whose kernel a template edit has changed since it was timed: its timing says
        # nothing about the SPIR-V this export would write.
        current = [e for e in entries if is_current(e[2].variant, e[2].kernel)]
        if len(current) < len(entries):
            print(f"kgen export: left out {len(entries) - len(current)} winner(s) whose kernels changed since "
                  "they were timed; `kgen tune` times them again", file=sys.stderr)
        entries = current
    if not entries:
        raise ExportError(f"no tuning winners in {db_path}{which}: run `kgen tune` first")
    if device_key is not None:
        known = sorted({f"{d.key} ({d.name})" for d, _, _ in entries})
        entries = [e for e in entries if e[0].key == device_key]
        if not entries:
            raise ExportError(f"--device-key {device_key}: no winners for it in {db_path}{which}; "
                              f"devices there: {', '.join(known)}")
    return entries


def cover(entries: list, name: str, device: int | None, cases: list | None = None) -> list:
    """Heuristic-default winners for the classes of case set `name` (or of `cases`, Shapes)
    that `entries` leave untuned on the device opened here; prints what the set covers and what
    kgen cannot serve."""
    from ..identity import BuildIdentity, DeviceIdentity, kernel_digest
    from ..planning.choose import choose_variant
    from ..planning.probe import open_for_kernels
    from ..tools.export import DEFAULT_STRATEGY
    from ..tools.ggml_cases import classes
    from ..tunedb import Winner
    caps = open_for_kernels(device).caps
    ident, build = DeviceIdentity.of(caps), BuildIdentity.current()
    if cases is None:
        cases = COVER_SETS[name]()
        problems, refused = classes(cases)
    else:
        from ..shapes import fold_gqa
        folded = {}
        for s in map(fold_gqa, cases):   # the class plans run (kgen tune folds the same way)
            folded.setdefault(s.problem().key, (s.problem(), s))
        problems, refused = list(folded.values()), {}
    tuned = {w.problem.key for d, _, w in entries if d.key == ident.key}
    added = []
    for p, shapes in problems:
        if p.key in tuned:
            continue
        v, splits, _ = choose_variant(shapes, caps, None, None, tuned=False)
        added.append((ident, build, Winner(p, v.uri, splits, median_us=0.0, spread_us=0.0,
                                           strategy=DEFAULT_STRATEGY, kernel=kernel_digest(v.uri))))
    served = len(cases) - sum(refused.values())
    print(f"kgen export {'--cover ' * (name in COVER_SETS)}{name}: {len(cases)} cases, {served} in {len(problems)} classes kgen serves "
          f"on {caps.name} ({len(problems) - len(added)} tuned, {len(added)} heuristic defaults); "
          f"{sum(refused.values())} left to the engine: "
          + (", ".join(f"{why} ({n})" for why, n in sorted(refused.items())) or "none"))
    return added
