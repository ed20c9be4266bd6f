"""The `kgen` command line: devices, space, generate, and the commands of SUBCOMMAND_MODULES."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import knobs
from ..errors import KgenError


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit code 2, as every other refusal of the command line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _load_caps(args) -> "list":
    """Caps from --caps FILE (one object or a list, as `kgen devices --json` writes) or the devices."""
    if getattr(args, "caps", None):
        return _caps_file(args.caps)
    from ..runtime.devices import list_devices
    return list_devices()


def _caps_file(name: str) -> list:
    from ..caps import Caps
    from .files import read_json_option
    data = read_json_option("--caps", name)
    items = data if isinstance(data, list) else [data]
    expected = "capability records as `kgen devices --json` writes them"
    if not items or not all(isinstance(d, dict) for d in items):
        raise ValueError(f"--caps {name}: not {expected}")
    try:
        return [Caps.from_dict(d) for d in items]
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"--caps {name}: not {expected} ({str(exc)[:200]})") from None


def _kv_type(text: str):
    from ..types import KvType
    try:
        return KvType.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pick(caps_list: list, index: int | None):
    if index is None:
        from ..select import default_index
        index = default_index(caps_list)
    if not 0 <= index < len(caps_list):
        raise ValueError(f"--device {index}: there are {len(caps_list)} device(s), 0-{len(caps_list) - 1}")
    return caps_list[index]


def cmd_devices(args) -> int:
    from ..tools.devices_report import format_caps
    caps_list = _load_caps(args)
    if args.json:
        print(json.dumps([json.loads(c.to_json()) for c in caps_list], indent=2))
    else:
        for i, caps in enumerate(caps_list):
            print(f"[{i}] " + format_caps(caps))
    return 0 if caps_list else 1


def cmd_space(args) -> int:
    from ..problem import ProblemClass
    from ..space import enumerate_space
    caps = _pick(_load_caps(args), args.device)
    problem = ProblemClass.of(head_k=args.head_k, head_v=args.head_v or args.head_k,
                              k_type=args.k_type, v_type=args.v_type or args.k_type,
                              features=tuple(args.feature or ()), acc=args.acc,
                              n_q=args.n_q, n_kv=args.n_kv, gqa=args.gqa)
    space = enumerate_space(problem, caps)
    print(f"{caps.name}: {problem}")
    for path, reason in space.unsupported_paths.items():
        print(f"  path {path}: unsupported: {reason}")
    for path, variants in space.by_path().items():
        print(f"  path {path}: {len(variants)} variant(s)")
        for v in variants:
            print(f"    {v.uri}")
    print(f"  rejected: {len(space.rejected)}")
    if args.explain:
        for what, reason in space.rejected:
            print(f"    {what}: {reason}")
    return 0


def cmd_generate(args) -> int:
    from ..tools.generate import generate
    return generate(out_dir=Path(args.out), check=args.check, compile_=not args.no_compile)


# Modules that add subcommands (tune, bench, roofline, db, export); added as they land.
SUBCOMMAND_MODULES: tuple[str, ...] = ("tune", "db", "export", "roofline", "bench", "model")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kgen", description="Flash-attention kernels for Vulkan: "
                     "generate, compile, verify and tune per device.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("devices", help="list Vulkan devices and their capabilities")
    p.add_argument("--json", action="store_true", help="machine-readable capability records")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("space", help="enumerate the variant space for a device and problem class")
    p.add_argument("--device", type=int, help="device index (see `kgen devices`, or into --caps)")
    p.add_argument("--caps", help="capability JSON file (as `kgen devices --json` writes)")
    p.add_argument("--head-k", type=int, default=128)
    p.add_argument("--head-v", type=int, help="default: head-k")
    p.add_argument("--k-type", type=_kv_type, default="f16")
    p.add_argument("--v-type", type=_kv_type, help="default: k-type")
    p.add_argument("--feature", action="append", help="compiled-in feature (repeatable)")
    p.add_argument("--acc", type=int, default=32, choices=(16, 32))
    p.add_argument("--n-q", type=int, default=512)
    p.add_argument("--n-kv", type=int, default=4096)
    p.add_argument("--gqa", type=int, default=1)
    p.add_argument("--explain", action="store_true", help="say why each rejected variant was cut")
    p.set_defaults(func=cmd_space)

    p = sub.add_parser("generate", help="render the reference variant set into generated/ and compile it")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "generated"))
    p.add_argument("--check", action="store_true", help="fail if generated/ differs; write nothing")
    p.add_argument("--no-compile", action="store_true", help="render only")
    p.set_defaults(func=cmd_generate)

    # Each further command lives in its own module with a register(subparsers) function.
    import importlib
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"kgen.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 2 refused (bad arguments, knobs or input files, and kgen's named
    errors); 1 failed (the system refused a file or folder). Each refusal or failure is one
    line on stderr that names what and how to fix it; a traceback means a bug in kgen."""
    args = build_parser().parse_args(argv)
    try:
        knobs.validate()   # before any command starts threads that read them
        return args.func(args)
    except KgenError as exc:
        return _fail(str(exc), 2)
    except KeyError:
        raise   # a bug, not a message: its text is only the missing key
    except (ValueError, LookupError) as exc:
        return _fail(str(exc), 2)
    except OSError as exc:
        return _fail(_os_error_line(exc), 1)


def _fail(message: str, code: int) -> int:
    print(f"kgen: {message}", file=sys.stderr)
    return code


def _os_error_line(exc: OSError) -> str:
    if exc.filename is None:
        return f"{exc.strerror or exc}"
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and (file := _file_in_the_way(exc.filename)):
        return f"{file} is a file where a folder is needed: move it or choose another path"
    path = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"{path}: {exc.strerror or exc}; check the path and its permissions, or choose another"


def _file_in_the_way(name) -> Path | None:
    """The first existing one of `name` and its parents, when it is not a folder."""
    for path in (Path(name), *Path(name).parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


if __name__ == "__main__":
    sys.exit(main())
