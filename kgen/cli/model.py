"""`kgen model`: the attention a model's config derives to (layer kinds, then the cases that
`kgen tune --model` and `kgen bench --model` run), and the options those commands share."""
from __future__ import annotations

import json
import sys

from .. import models
from ..models import ModelError

# Options that shape a model's cases: refused without --model rather than ignored.
MODEL_OPTIONS = {"context": "--context", "ubatch": "--ubatch", "decode_batch": "--decode-batch",
                 "kv_type": "--kv-type", "k_type": "--k-type", "v_type": "--v-type", "precision": "--precision"}


# Ends each help text: "%(default)" in a help keeps ArgumentDefaultsHelpFormatter (kgen tune's)
# from appending "(default: None)", and the zero-width field prints nothing.
OWN_DEFAULT = "%(default).0s"


def add_case_options(p, *, model_flag: bool = True) -> None:
    """--model/--shape (where `model_flag`) and the options of a model's cases. Their defaults are
    None, so that one given without --model is refused; the help says what None stands for."""
    if model_flag:
        p.add_argument("--model", metavar="NAME_OR_CONFIG",
                       help="a preset (kgen model list) or a Hugging Face config.json (file or folder): "
                            "its layers' attention instead of a suite" + OWN_DEFAULT)
        p.add_argument("--shape", action="append", metavar="B,Hq,Hkv,Nq,Nkv,Dk,Dv[,KV][,FEATURES]",
                       help="a free-form case (repeatable), e.g. 1,32,8,512,4096,128,128,q8_0,causal+window=4096; "
                            f"features: {', '.join(models.SHAPE_FEATURES)}" + OWN_DEFAULT)
    p.add_argument("--context", metavar="N[,N..]",
                   help=f"KV lengths of the model's cases (default {','.join(map(str, models.DEFAULT_CONTEXTS))})"
                   + OWN_DEFAULT)
    p.add_argument("--ubatch", metavar="N", help=f"prefill query rows (default {models.DEFAULT_UBATCH})" + OWN_DEFAULT)
    p.add_argument("--decode-batch", metavar="N[,N..]",
                   help="query rows of a decode step, e.g. 1,8 with speculative decoding (default "
                        f"{','.join(map(str, models.DEFAULT_DECODE_BATCH))})" + OWN_DEFAULT)
    p.add_argument("--kv-type", metavar="T[,T..]",
                   help="K and V storage types, one set of cases each (default f16)" + OWN_DEFAULT)
    p.add_argument("--k-type", metavar="T", help="K's storage type (instead of --kv-type)" + OWN_DEFAULT)
    p.add_argument("--v-type", metavar="T", help="V's storage type (default: --k-type)" + OWN_DEFAULT)
    p.add_argument("--precision", metavar="P[,P..]",
                   help="f32 (default) and/or f16: the accumulation precision" + OWN_DEFAULT)


def derived_cases(model: "models.ModelAttention", args) -> tuple["models.ModelCase", ...]:
    """The model's cases for the options in `args` (ModelError naming the option)."""
    return model.cases(
        contexts=models.int_list(args.context, "--context") if args.context else models.DEFAULT_CONTEXTS,
        ubatch=models.int_list(args.ubatch, "--ubatch")[0] if args.ubatch else models.DEFAULT_UBATCH,
        decode_batch=(models.int_list(args.decode_batch, "--decode-batch") if args.decode_batch
                      else models.DEFAULT_DECODE_BATCH),
        kv_types=models.kv_type_pairs(args.kv_type, args.k_type, args.v_type),
        precisions=(tuple(p.strip() for p in args.precision.split(",")) if args.precision
                    else models.DEFAULT_PRECISIONS))


def chosen_cases(args, *, one_per_class: bool) -> tuple[list, str] | None:
    """The cases of --model and --shape (filtered by --case) and a label for reports, or None
    when neither is given (the suite decides). `one_per_class`: a model's cases that fall in the
    same problem class are tuned once (models.distinct_classes). Raises ModelError."""
    if not args.model and not args.shape:
        given = [flag for name, flag in MODEL_OPTIONS.items() if getattr(args, name) is not None]
        if given:
            raise ModelError(f"{', '.join(given)}: options of a model's cases; give --model NAME_OR_CONFIG too")
        return None
    if args.suite:
        raise ModelError(f"--suite {args.suite} and --model/--shape both pick the cases: give one")
    cases, label = [], []
    if args.model:
        model = models.load(args.model)
        derived = derived_cases(model, args)
        picked = models.distinct_classes(derived) if one_per_class else derived
        cases += [mc.case for mc in picked]
        label.append(f"--model {model.name}" + (f" ({len(derived)} cases in {len(picked)} classes)"
                                                 if len(picked) < len(derived) else ""))
    elif any(getattr(args, name) is not None for name in MODEL_OPTIONS):
        given = [flag for name, flag in MODEL_OPTIONS.items() if getattr(args, name) is not None]
        raise ModelError(f"{', '.join(given)}: options of a model's cases, and a --shape case is given in "
                         "full: put its KV types and features in the --shape text")
    for text in args.shape or ():
        cases.append(models.parse_shape(text))
        label.append(f"--shape {text}")
    if args.case:
        picked = [c for c in cases if any(o.lower() in c.name.lower() for o in args.case)]
        if not picked:
            raise ModelError(f"--case {' '.join(args.case)}: no case matches; the cases: "
                             f"{', '.join(c.name for c in cases)}")
        cases = picked
    return cases, " ".join(label)


def model_cases_in(args, cases) -> tuple["models.ModelAttention", list["models.ModelCase"]] | None:
    """The model of --model and its derived cases that are among `cases` (chosen_cases' pick,
    --case applied), in their derived order; None without --model. Raises ModelError."""
    if not args.model:
        return None
    model = models.load(args.model)
    picked = set(cases)
    return model, [mc for mc in derived_cases(model, args) if mc.case in picked]


def command_words(args) -> list[str]:
    """The --model/--shape part of a command line that reproduces `args`."""
    words = ["--model", args.model] if args.model else []
    for text in args.shape or ():
        words += ["--shape", text]
    for name, flag in MODEL_OPTIONS.items():
        if getattr(args, name) is not None:
            words += [flag, str(getattr(args, name))]
    return words


def show_document(model: "models.ModelAttention", cases) -> dict:
    """What `kgen model show --json` prints: the model's layer kinds, then each case with its
    problem class and the earlier case of the same class, if any (tuned once for both)."""
    first_of: dict[str, str] = {}
    listed = []
    for mc in cases:
        key = mc.case.problem().key
        listed.append(models.case_dict(mc, first_of.get(key)))
        first_of.setdefault(key, mc.case.name)
    return {**model.as_dict(), "cases": listed}


def _feature_text(kind: "models.LayerKind") -> str:
    parts = []
    for name, value in kind.feature_values().items():
        if value is True:
            parts.append(name)
        elif name == "scale":
            parts.append(f"scale={value:.6g} ({kind.scale_from})")
        else:
            parts.append(f"{name}={value:g}")
    return ", ".join(parts)


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]


def show_text(model: "models.ModelAttention", doc: dict) -> str:
    lines = [f"{model.name}: model_type {model.model_type}, {model.num_layers} layers"
             + (f" ({model.source})" if model.source else "")]
    lines += [f"  {note}" for note in model.notes]
    rows = [("layer kind", "layers", "head_k", "head_v", "Hq", "Hkv", "gqa", "features")]
    for k in model.kinds:
        rows.append((k.name, str(k.layers), str(k.head_k), str(k.head_v), str(k.heads_q), str(k.heads_kv),
                     str(k.gqa), _feature_text(k)))
    lines += [""] + _columns(rows)
    rows = [("case", "layers", "class", "shape")]
    for c in doc["cases"]:
        shape = c["describe"] + (f"; class of {c['shares_class_with']}" if c["shares_class_with"] else "")
        rows.append((c["name"], str(c["layers"]), c["class"], shape))
    lines += ["", f"{len(doc['cases'])} case(s):"] + _columns(rows)
    return "\n".join(lines)


def cmd_show(args) -> int:
    try:
        model = models.load(args.model)
        cases = derived_cases(model, args)
    except ModelError as exc:
        print(f"kgen model show: {exc}", file=sys.stderr)
        return 2
    doc = show_document(model, cases)
    print(json.dumps(doc, indent=2) if args.json else show_text(model, doc))
    return 0


def cmd_list(args) -> int:
    for name in models.preset_names():
        config, _, source = models.read_config(name)
        print(f"{name:20} {config.get('model_type', '?'):12} {source}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("model", help="the attention shapes a model's config.json (or a preset) derives to")
    msub = p.add_subparsers(dest="model_command", required=True)
    s = msub.add_parser("show", help="a model's layer kinds and the cases `kgen tune --model` would run "
                        "(no device is opened)")
    s.add_argument("model", metavar="NAME_OR_CONFIG", help="a preset (kgen model list) or a config.json path")
    s.add_argument("--json", action="store_true", help="machine-readable")
    add_case_options(s, model_flag=False)
    s.set_defaults(func=cmd_show)
    ls = msub.add_parser("list", help="the built-in presets and the config.json each copies")
    ls.set_defaults(func=cmd_list)
