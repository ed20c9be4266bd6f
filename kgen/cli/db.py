"""`kgen db`: export, import, show, reset and locate the tuning database."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import tunedb
from .files import read_json


def cmd_export(args) -> int:
    with tunedb.TuningDB() as db:
        text = json.dumps(db.export_json(), indent=1, sort_keys=True) + "\n"
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"exported {db.path} to {args.output}")
    return 0


def cmd_import(args) -> int:
    data = read_json(args.file, stdin=True)
    with tunedb.TuningDB() as db:
        count = db.import_json(data)
        print(f"imported {count} record(s) from {args.file} into {db.path}")
    return 0


def cmd_merge(args) -> int:
    from ..tunedb.merge import merge
    merged, counts = merge([(f, read_json(f, stdin=True)) for f in args.files])
    text = json.dumps(merged, indent=1, sort_keys=True) + "\n"
    out = Path(args.output)
    tmp = out.with_name(out.name + ".tmp")   # no half-written file on a failure
    tmp.write_text(text)
    tmp.replace(out)
    print(f"merged {len(args.files)} exports into {args.output}: {counts['devices']} device(s), "
          f"{counts['builds']} build(s), {counts['measurements']} measurement(s), {counts['winners']} winner(s)"
          + (f"; {counts['replaced']} measurement(s) found in two files kept with more runs" if counts["replaced"] else ""))
    return 0


def printable(text: str) -> str:
    """`text` with every character a terminal would act on (escapes, newlines, NUL, bidi
    controls) written as its Python escape: a DB's strings are printed, never obeyed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def cmd_show(args) -> int:
    from ..identity import is_current
    with tunedb.TuningDB() as db:
        rows = [tuple(map(printable, (
                    d.name or d.key, w.problem.key, w.variant, str(w.splits), f"{w.median_us:.1f}",
                    "current" if is_current(w.variant, w.kernel) else "changed",
                    f"{w.runner_up} {w.runner_up_us:.1f}" if w.runner_up else "-")))
                for d, _, w in db.winners() if args.device_key is None or d.key.startswith(args.device_key)]
        if not rows:
            print(f"no winners in {db.path}" + (f" for device {printable(args.device_key)}" if args.device_key else ""))
            return 0
    # kernel: "changed" when a template edit changed the winner's source since it was timed (the
    # dispatcher skips it until `kgen tune` times it again).
    header = ("device", "class", "variant", "splits", "median us", "kernel", "runner-up@splits us")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def cmd_reset(args) -> int:
    from .. import knobs
    path = knobs.db_path()
    aside = tunedb.TuningDB.reset(path)
    print(f"moved {path} aside to {aside}; {path} is empty now" if aside else
          f"no tuning DB at {path}; {path} is empty now")
    return 0


def cmd_path(args) -> int:
    from .. import knobs
    print(knobs.db_path())
    return 0


def register(subparsers) -> None:
    db = subparsers.add_parser("db", help="the tuning database (KGEN_DB): export, import, show, reset")
    sub = db.add_subparsers(dest="db_command", required=True)
    p = sub.add_parser("export", help="write every device, build, measurement and winner as JSON")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("import", help="merge an export (all or nothing; every field is checked first)")
    p.add_argument("file", help="JSON file from `kgen db export` (- for stdin)")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("merge", help="several exports (of several machines) into one; conflicting winners are an error")
    p.add_argument("files", nargs="+", help="JSON files from `kgen db export`")
    p.add_argument("-o", "--output", required=True, help="the merged export to write")
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser("show", help="the winner of each problem class, per device")
    p.add_argument("--device-key", help="only this device (its key, or a prefix of it)")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("reset", help="move the DB aside to <name>.corrupt-<time> and start empty "
                       "(refused while a tune runs on it)")
    p.set_defaults(func=cmd_reset)
    p = sub.add_parser("path", help="print the DB file's path")
    p.set_defaults(func=cmd_path)
