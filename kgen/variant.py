"""One frozen dataclass per FA kernel variant. Its `uri` is derived from the fields and parses back.

Adding a field here updates the name, the cache key and the tuning DB key with no other edit:
all three are derived from `uri`.
"""
from __future__ import annotations

import dataclasses
import enum
import operator
import re
from dataclasses import dataclass
from typing import Callable

from .errors import InvalidVariant
from .types import KvType

HEAD_MIN, HEAD_MAX, HEAD_STEP = 32, 576, 8
MAX_WORKGROUP = 1024


class PathKind(enum.Enum):
    SCALAR = "scalar"
    COOPMAT1 = "coopmat1"
    COOPMAT2 = "coopmat2"

    @property
    def short(self) -> str:
        return {"scalar": "sc", "coopmat1": "cm1", "coopmat2": "cm2"}[self.value]

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, name: "str | PathKind") -> "PathKind":
        if isinstance(name, PathKind):
            return name
        for p in cls:
            if name in (p.value, p.short):
                return p
        raise ValueError(f"unknown path {name!r}; known: {', '.join(p.value for p in cls)}")


class Schedule(str, enum.Enum):
    """How a kernel moves K and V to its products and where it keeps S, P and O. Each path's
    TEMPLATES maps the schedules it has to their top templates."""

    BASE = "base"      # the path's plain kernel (coopmat1: K/V staged in chunks; scalar: loaded straight)
    STAGE = "stage"    # whole K and V tiles staged through shared memory at once (fewest barriers)
    DIRECT = "direct"  # coopmat1, f16 K/V: matrix operands loaded straight from the K and V buffers
    STREAM = "stream"  # the next K/V tile's loads in flight during this one's work (decode)
    REGS = "regs"      # coopmat1, f16 K/V: FlashAttention-2, each subgroup's S, P and O in registers
    OSPLIT = "osplit"  # regs with O split by columns over the subgroups (V heads too wide: MLA)

    def __str__(self) -> str:
        return self.value

    @property
    def softmax_in_registers(self) -> bool:
        """The schedules whose softmax works on the accumulators in a fragment scheme."""
        return self in (Schedule.REGS, Schedule.OSPLIT)

    @classmethod
    def parse(cls, name: "str | Schedule") -> "Schedule":
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"unknown schedule {name!r}; known: {', '.join(s.value for s in cls)}") from None


# Compiled-in features, in uri order. `causal` also covers the sliding window (its width is a
# run-time value); `split_k` makes the kernel write partial outputs for a reduce pass.
FEATURES = ("mask", "causal", "alibi", "softcap", "sinks", "split_k")
SPLIT_SYNC_SCHEMES = (0, 1, 2)  # Variant.split_sync: 0 = workgroup barriers


@dataclass(frozen=True)
class Variant:
    path: PathKind
    head_k: int
    head_v: int
    k_type: KvType
    v_type: KvType
    br: int                  # query rows per workgroup
    bc: int                  # KV columns per inner step
    wg: int                  # workgroup size (invocations)
    acc: int = 32            # accumulator bits: 32 = f32 end to end, 16 = f16 where the path allows
    subgroup: int = 32       # required subgroup size
    d_split: int = 0         # scalar: threads per dot product
    row_split: int = 0       # scalar: row groups per workgroup
    schedule: Schedule = Schedule.BASE  # the kernel's schedule; each path has its own few
    frag_scheme: int = 0      # regs, osplit: the fragment scheme (kgen/paths/fragments.py SCHEMES)
                              # that says which S elements each lane holds; 0 for other schedules
    split_sync: int = 0       # regs: 0 = two workgroup barriers per tile; 1, 2 = subgroups
                              # count their arrivals in shared memory and wait only for what they
                              # read next (1: V stored right after S, the next K loaded during the
                              # softmax; 2: loads and stores where the barriers have them)
    v_in_k: bool = False      # V is the first head_v columns of K's rows (MLA): read from K's tile
    kv_f16: bool = False      # a pass converts block-quantized K/V to dense f16 before the kernel
    mask_tiles: bool = False  # coopmat2: a pass classifies mask tiles (all -inf: skipped; all 0: no load)
    fused_reduce: bool = False  # split_k: the last workgroup of a row tile to finish combines the
                                # splits' partial rows itself, so no reduce pass runs
    page: int = 0            # paged KV: tokens per cache page, read through a block table (0 = dense)
    mat_m: int = 0           # coopmat1: matrix shape M x N x K
    mat_n: int = 0
    mat_k: int = 0
    mask: bool = False
    causal: bool = False
    alibi: bool = False
    softcap: bool = False
    sinks: bool = False
    split_k: bool = False
    aligned: bool = False    # the runtime guarantees Nkv % bc == 0: no KV bounds checks

    def __post_init__(self):
        object.__setattr__(self, "path", PathKind.parse(self.path))
        object.__setattr__(self, "k_type", KvType.parse(self.k_type))
        object.__setattr__(self, "v_type", KvType.parse(self.v_type))
        object.__setattr__(self, "schedule", Schedule.parse(self.schedule))
        for name in _INT_FIELDS:  # numpy's integers and the like become ints; floats are refused below
            value = getattr(self, name)
            if not isinstance(value, (int, float)) and hasattr(type(value), "__index__"):
                try:
                    object.__setattr__(self, name, operator.index(value))
                except TypeError:
                    pass
        reason = _intrinsic_reason(self)
        if reason is None:
            reason = _path_check(self.path)(self.kernel)
        if reason:
            raise InvalidVariant(self._label(), reason)

    # --- naming ---------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return "_".join(tok for fmt, _ in _TOKENS if (tok := fmt(self)))

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> "Variant":
        m = _URI_RE.fullmatch(uri)
        if not m:
            raise ValueError(f"not a kgen variant uri: {uri!r}")
        g = m.groupdict()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict = {"path": PathKind.parse(g.pop("path")),
                         "k_type": KvType.parse(g.pop("k_type")),
                         "v_type": KvType.parse(g.pop("v_type")),
                         "schedule": _parse_schedule(uri, g.pop("schedule"), g["frag_scheme"],
                                                     g.pop("osplit"))}
        for name, text in g.items():
            if text is not None:
                values[name] = True if fields[name].type in (bool, "bool") else int(text)
        return cls(**values)

    def replace(self, **changes) -> "Variant":
        return dataclasses.replace(self, **changes)

    @property
    def kernel(self) -> "Variant":
        """The attention kernel this variant runs: with kv_f16, the f16 kernel that the converted
        K/V feed (same tiles and features); otherwise the variant itself."""
        if not self.kv_f16:
            return self
        f16 = {f"{t}_type": KvType.F16 for t in "kv" if getattr(self, f"{t}_type").quantized}
        return dataclasses.replace(self, kv_f16=False, **f16)

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(f for f in FEATURES if getattr(self, f))

    def _label(self) -> str:
        try:
            return self.uri
        except Exception:  # the fields may be too broken to name; show them instead
            return repr(self)


_INT_FIELDS = tuple(f.name for f in dataclasses.fields(Variant) if f.type in ("int", int))
_BOOL_FIELDS = tuple(f.name for f in dataclasses.fields(Variant) if f.type in ("bool", bool))


# Each path's structural rules (kgen/paths/<path>.py `check`), registered by kgen.paths: the
# paths build on this module, so it names their rules without importing them.
_PATH_CHECKS: dict[PathKind, Callable[[Variant], "str | None"]] = {}


def register_path_check(kind: PathKind, check: Callable[[Variant], "str | None"]) -> None:
    _PATH_CHECKS[kind] = check


def _path_check(kind: PathKind) -> Callable[[Variant], "str | None"]:
    try:
        return _PATH_CHECKS[kind]
    except KeyError:  # only a kgen.variant loaded without the kgen package around it
        raise RuntimeError(f"path {kind}: its variant rules are not registered (import kgen.paths)") from None


def _intrinsic_reason(v: Variant) -> str | None:
    """Rules every path shares. Path-specific rules live in kgen/paths/<path>.py."""
    for name in _INT_FIELDS:  # first: the rules below compare numbers, and templates print them
        value = getattr(v, name)
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name}={value!r}: a whole number (int), not {type(value).__name__}"
    for name in _BOOL_FIELDS:
        value = getattr(v, name)
        if not isinstance(value, bool):
            return f"{name}={value!r}: True or False, not {type(value).__name__}"
    for name in ("head_k", "head_v"):
        h = getattr(v, name)
        if not (HEAD_MIN <= h <= HEAD_MAX and h % HEAD_STEP == 0):
            return f"{name}={h}: head sizes are multiples of {HEAD_STEP} from {HEAD_MIN} to {HEAD_MAX}"
    if v.acc not in (16, 32):
        return f"acc={v.acc}: accumulator precision is 16 or 32 bits"
    if v.subgroup not in (4, 8, 16, 32, 64, 128):
        return f"subgroup={v.subgroup}: a power of two from 4 to 128"
    if not (0 < v.wg <= MAX_WORKGROUP) or v.wg % v.subgroup:
        return f"wg={v.wg}: a multiple of the subgroup size ({v.subgroup}) up to {MAX_WORKGROUP}"
    if v.br < 1 or v.bc < 1:
        return f"br={v.br}, bc={v.bc}: tile sizes are positive"
    if v.kv_f16 and not (v.k_type.quantized or v.v_type.quantized):
        return (f"kv_f16 with {v.k_type}/{v.v_type} K/V: the pass converts block-quantized "
                "types only (leave it False)")
    if v.mask_tiles and not v.mask:
        return "mask_tiles classifies the mask's tiles: it needs the mask feature"
    if v.v_in_k and (v.head_v > v.head_k or v.k_type != v.v_type):
        return (f"v_in_k: V ({v.head_v} {v.v_type}) is the first columns of K's rows "
                f"({v.head_k} {v.k_type}): head_v <= head_k, one type")
    if v.fused_reduce and not v.split_k:
        return "fused_reduce combines split-k partial rows: it needs the split_k feature"
    if v.split_sync not in SPLIT_SYNC_SCHEMES:
        return f"split_sync={v.split_sync}: one of {SPLIT_SYNC_SCHEMES} (0: workgroup barriers)"
    if v.schedule.softmax_in_registers and not v.frag_scheme:
        return (f"schedule={v.schedule}: its softmax works on the accumulators in a fragment "
                "scheme; set frag_scheme to one (kgen/paths/fragments.py SCHEMES)")
    if v.frag_scheme and not v.schedule.softmax_in_registers:
        return (f"frag_scheme={v.frag_scheme}: a fragment scheme of the regs and osplit schedules, "
                f"not of schedule={v.schedule} (leave it 0)")
    if v.split_sync and v.schedule is not Schedule.REGS:
        return (f"split_sync replaces the barriers of the regs schedule (coopmat1), not of "
                f"schedule={v.schedule}: leave it 0")
    if v.alibi and not v.mask:
        return "alibi scales the mask (score + slope * mask): it needs the mask feature"
    if v.page:
        return _paged_reason(v)
    return None


PAGE_STEP, PAGE_MAX = 16, 256


def _paged_reason(v: Variant) -> str | None:
    """Rules of the paged kernels (templates/README.md: paged KV), or None."""
    if v.page % PAGE_STEP or not PAGE_STEP <= v.page <= PAGE_MAX:
        return f"page={v.page}: tokens per page, a multiple of {PAGE_STEP} from {PAGE_STEP} to {PAGE_MAX}"
    if v.path is not PathKind.SCALAR:
        return f"page={v.page}: paged KV kernels exist on the scalar path only, not {v.path}"
    unsupported = [name for name in ("mask", "alibi", "fused_reduce", "kv_f16", "v_in_k", "aligned")
                   if getattr(v, name)]
    if unsupported:
        return f"page={v.page}: the paged kernels do not take {', '.join(unsupported)} (leave them off)"
    return None


# --- uri grammar: one (format, regex) pair per token, in order ---------------------------------
def _flag(name: str, token: str) -> tuple[Callable[[Variant], str], str]:
    return (lambda v: token if getattr(v, name) else ""), rf"(?:_(?P<{name}>{token}))?"


def _knob(name: str, prefix: str) -> tuple[Callable[[Variant], str], str]:
    return (lambda v: f"{prefix}{getattr(v, name)}" if getattr(v, name) else ""), \
        rf"(?:_{prefix}(?P<{name}>\d+))?"


_NAMED_SCHEDULES = (Schedule.STAGE, Schedule.DIRECT, Schedule.STREAM)


def _parse_schedule(uri: str, named: str | None, frag: str | None, osplit: str | None) -> Schedule:
    """The schedule a uri's tokens name: `named` (stage, direct, stream), else regs{frag}, which
    `osplit` after it makes the osplit schedule."""
    if named and (frag is not None or osplit):
        raise ValueError(f"not a kgen variant uri: {uri!r} (two schedules: {named} and regs)")
    if osplit:
        return Schedule.OSPLIT
    if frag is not None:
        return Schedule.REGS
    return Schedule.parse(named) if named else Schedule.BASE


_TYPE_RE = "|".join(sorted((re.escape(t.label) for t in KvType), key=len, reverse=True))
_TOKENS: list[tuple[Callable[[Variant], str], str]] = [
    (lambda v: "fa", "fa"),
    (lambda v: v.path.short, r"_(?P<path>sc|cm1|cm2)"),
    (lambda v: f"k{v.head_k}", r"_k(?P<head_k>\d+)"),
    (lambda v: f"v{v.head_v}", r"_v(?P<head_v>\d+)"),
    (lambda v: f"{v.k_type}{v.v_type}", rf"_(?P<k_type>{_TYPE_RE})(?P<v_type>{_TYPE_RE})"),
    (lambda v: f"acc{v.acc}", r"_acc(?P<acc>\d+)"),
    (lambda v: f"br{v.br}", r"_br(?P<br>\d+)"),
    (lambda v: f"bc{v.bc}", r"_bc(?P<bc>\d+)"),
    (lambda v: f"wg{v.wg}", r"_wg(?P<wg>\d+)"),
    (lambda v: f"sg{v.subgroup}", r"_sg(?P<subgroup>\d+)"),
    _knob("d_split", "ds"),
    _knob("row_split", "rs"),
    # The schedule, where the uris already written hold it: stage, direct or stream by name;
    # regs as its fragment scheme, regs{n} (then sync{n}); osplit as regs{n}_osplit.
    (lambda v: v.schedule.value if v.schedule in _NAMED_SCHEDULES else "",
     rf"(?:_(?P<schedule>{'|'.join(s.value for s in _NAMED_SCHEDULES)}))?"),
    _knob("frag_scheme", "regs"),
    _knob("split_sync", "sync"),
    (lambda v: "osplit" if v.schedule is Schedule.OSPLIT else "", r"(?:_(?P<osplit>osplit))?"),
    _flag("v_in_k", "vink"),
    _flag("kv_f16", "kvf16"),
    _flag("mask_tiles", "mtiles"),
    _flag("fused_reduce", "fusedred"),
    _knob("page", "pg"),
    (lambda v: f"m{v.mat_m}n{v.mat_n}k{v.mat_k}" if v.mat_m else "",
     r"(?:_m(?P<mat_m>\d+)n(?P<mat_n>\d+)k(?P<mat_k>\d+))?"),
    *(_flag(f, f.replace("_", "")) for f in FEATURES),
    _flag("aligned", "aligned"),
]
_URI_RE = re.compile("".join(rx for _, rx in _TOKENS))
