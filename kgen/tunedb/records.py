"""The tuning DB's records: a measurement, a winner, and the device and build they were timed on.

Each type reads one JSON record (an export's, or what record() and set_winner() are about to
store) with from_record(rec, where), checking every field and raising TuningDBError that names
`where` and the field; so the DB only ever holds what an import would accept, and an export
always imports again. Whether a variant computes a problem class is kgen.problem.mismatch's rule.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import dataclass

from ..errors import KgenError
from ..identity import BuildIdentity, DeviceIdentity
from ..problem import ProblemClass, mismatch

SCHEMA_VERSION = 2       # of the export and of the DB's tables (named <table>_v2)
EXPORT_FORMAT = "kgen-tuning-db"
STATUSES = ("ok", "wrong", "failed")  # timed; failed the reference check; compile/pipeline/run error
MAX_TEXT = 4096          # longest string stored or imported (a longer `reason` is cut on record)
_MAX_INT = 2**63 - 1     # SQLite's INTEGER range; identity numbers are never negative

# Reasons the tuner reads back. A candidate whose check or timing took its process down
# CRASH_STRIKES times in a row is stored as failed with crash_reason(); `kgen tune --retry-crashed`
# forgets those. A dead process cannot say what killed it: a driver crash and a kill from outside
# (the OOM killer, kill -9) leave the same marker, so a single death is only a strike. An outside
# kill rarely lands on one candidate twice, and a verdict costs that candidate's speed, never a
# wrong result; a candidate that does crash its process would otherwise crash every rerun. Older
# kgens stored LEGACY_CRASH_MARK before every check and left it behind when killed: it counts as
# one strike. A failure whose reason starts with TRANSIENT (a compiler killed by a signal) is
# checked again by the next tune.
CRASH_STRIKES = 2
CRASHED = "its check or timing died with the process"
EARLIER_CRASHED = "its check died with the process"   # how older kgens worded the same verdict
LEGACY_CRASH_MARK = ("crashed the process while being checked (a driver crash?); "
                     "a rerun skips it, `kgen db reset` forgets it")
TRANSIENT = "transient, checked again by the next tune: "


def crash_reason(times: int) -> str:
    return (f"{CRASHED} {times} times (a driver crash, or a kill from outside); "
            "`kgen tune --retry-crashed` checks it again")


def is_crash(reason: str) -> bool:
    return reason.startswith((CRASHED, EARLIER_CRASHED)) or reason == LEGACY_CRASH_MARK


class TuningDBError(KgenError):
    """The tuning DB cannot be used (corrupt, bad import, bad record); says how to recover."""


def _fail(where: str, message: str) -> typing.NoReturn:
    raise TuningDBError(f"{where}: {message}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _value(where: str, value, hint):
    """One field against its type hint: ints are ints (not bools) in SQLite's range, floats
    finite and non-negative, strings at most MAX_TEXT characters."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is int:
        if type(value) is not int or not 0 <= value <= _MAX_INT:
            _fail(where, f"{_short(value)} is not an integer from 0 to 2**63-1")
    elif hint is float:
        if type(value) not in (int, float) or not (math.isfinite(value) and value >= 0):
            _fail(where, f"{_short(value)} is not a finite non-negative number")
        return float(value)
    elif hint is str:
        if type(value) is not str or len(value) > MAX_TEXT:
            _fail(where, f"{_short(value)} is not a string of at most {MAX_TEXT} characters")
    else:
        raise AssertionError(f"no check for {hint}")
    return value


def _fields(where: str, rec, hints: dict[str, object]) -> dict:
    """A record with exactly the fields `hints` names, each checked against its hint."""
    if type(rec) is not dict:
        _fail(where, f"expected an object, got {type(rec).__name__}")
    unknown = [k for k in rec if k not in hints]
    if unknown:
        _fail(where, f"unknown field(s) {_short(sorted(map(str, unknown)))}")
    missing = [k for k in hints if k not in rec]
    if missing:
        _fail(where, f"missing field(s) {missing}")
    return {k: _value(f"{where}.{k}", rec[k], hint) for k, hint in hints.items()}


def _check_choice(where: str, problem: ProblemClass, uri: str, splits: int) -> None:
    """`uri` is a variant that, run with `splits` KV splits, computes `problem`."""
    from ..variant import Variant  # imports the path modules; only needed when checking
    try:
        v = Variant.parse(uri)
    except (ValueError, ArithmeticError) as exc:
        _fail(where, f"{_short(uri)} is not a valid variant: {str(exc)[:200]}")
    if v.uri != uri:   # digits of other scripts, leading zeros: one decision, one spelling
        _fail(where, f"{_short(uri)} is not canonical: the variant's uri is {_short(v.uri)}")
    reason = mismatch(v, problem, splits)
    if reason is not None:
        _fail(where, reason)


class _Record:
    """from_record / to_record for the frozen dataclasses below: the fields as their type hints
    say (`problem` as its ProblemClass.key), then the type's own rules (_check)."""

    @classmethod
    @functools.cache
    def hints(cls) -> dict[str, object]:
        return {**typing.get_type_hints(cls), "problem": str}

    @classmethod
    def from_record(cls, rec: dict, where: str):
        values = _fields(where, rec, cls.hints())
        try:
            values["problem"] = ProblemClass.parse(values["problem"])
        except ValueError as exc:
            _fail(f"{where}.problem", str(exc)[:200])
        item = cls(**values)
        _check_choice(f"{where}.variant", item.problem, item.variant, item.splits)
        item._check(where)
        return item

    def to_record(self) -> dict:
        """The fields as JSON: the problem as its key, numpy numbers as Python ones, a long
        reason or shape cut to MAX_TEXT (a compile log's start says why)."""
        rec = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "problem":
                value = value.key
            elif isinstance(value, str) and f.name in ("reason", "shape"):
                value = value[:MAX_TEXT]
            elif hasattr(value, "item") and not isinstance(value, str):
                value = value.item()       # a numpy scalar
            rec[f.name] = value
        return rec

    def _check(self, where: str) -> None:
        pass


@dataclass(frozen=True)
class Measurement(_Record):
    problem: ProblemClass
    variant: str           # Variant.uri
    splits: int            # KV splits the timing ran with (1 = no split-k)
    status: str            # one of STATUSES
    median_us: float | None = None   # GPU time, all passes; None unless status == "ok"
    spread_us: float | None = None   # interquartile range of the timed runs
    runs: int = 0
    nmse: float | None = None        # against kgen.reference on the check problem
    reason: str = ""                 # why "wrong" / "failed"
    shape: str = ""                  # the timed shape, for people (e.g. "B1 Hq32 Hkv8 Nq1 Nkv16384")
    kernel: str = ""                 # identity.kernel_digest of the variant when it was timed

    def _check(self, where: str) -> None:
        if self.status not in STATUSES:
            _fail(f"{where}.status", f"{_short(self.status)} is not one of {', '.join(STATUSES)}")
        if (self.median_us is None) == (self.status == "ok"):
            _fail(f"{where}.median_us", "a time exactly when status is 'ok'")


@dataclass(frozen=True)
class Winner(_Record):
    problem: ProblemClass
    variant: str
    splits: int
    median_us: float
    spread_us: float
    runner_up: str | None = None     # "uri" of the second best, with its splits as "uri@splits"
    runner_up_us: float | None = None
    candidates: int = 0              # how many were timed
    strategy: str = ""
    kernel: str = ""                 # identity.kernel_digest of the variant when it was timed

    def _check(self, where: str) -> None:
        if (self.runner_up is None) != (self.runner_up_us is None):
            _fail(f"{where}.runner_up_us", "set exactly when runner_up is")
        if self.runner_up is not None:
            uri, at, splits = self.runner_up.rpartition("@")
            if not at:
                uri, splits = self.runner_up, "1"
            elif not re.fullmatch(r"[1-9][0-9]{0,5}", splits):
                _fail(f"{where}.runner_up", f"{_short(self.runner_up)}: the splits after @ are not "
                      "a number from 1 to 999999 in ASCII digits without leading zeros")
            _check_choice(f"{where}.runner_up", self.problem, uri, int(splits))


@dataclass(frozen=True)
class Stored:
    """A measurement or winner as the DB keeps it: under its device's and build's keys, with
    when it was stored. Its record is the item's fields and these three."""
    device: str
    build: str
    item: Measurement | Winner
    created_at: float

    ENVELOPE: typing.ClassVar[dict] = {"device": str, "build": str, "created_at": float}

    @classmethod
    def from_record(cls, rec: dict, where: str, kind: type[Measurement] | type[Winner]) -> "Stored":
        if type(rec) is not dict:
            _fail(where, f"expected an object, got {type(rec).__name__}")
        missing = [k for k in cls.ENVELOPE if k not in rec]
        if missing:
            _fail(where, f"missing field(s) {missing}")
        env = {k: _value(f"{where}.{k}", rec[k], hint) for k, hint in cls.ENVELOPE.items()}
        item = kind.from_record({k: v for k, v in rec.items() if k not in cls.ENVELOPE}, where)
        return cls(env["device"], env["build"], item, env["created_at"])

    def to_record(self) -> dict:
        return {"device": self.device, "build": self.build, **self.item.to_record(),
                "created_at": self.created_at}

    @property
    def key(self) -> tuple:
        """What the DB holds one of: per class a winner, per class and (variant, splits) a measurement."""
        key = (self.device, self.build, self.item.problem.key)
        return key + ((self.item.variant, self.item.splits) if isinstance(self.item, Measurement) else ())


def identity_from_record(cls: type[DeviceIdentity] | type[BuildIdentity], rec: dict, where: str):
    """A DeviceIdentity or BuildIdentity from its record: its fields and the key they make. Its
    strings are printed (`kgen db show`, merge's conflicts): no control characters."""
    values = _fields(where, rec, {"key": str, **typing.get_type_hints(cls)})
    for name, value in values.items():
        if isinstance(value, str) and not value.isprintable():
            _fail(f"{where}.{name}", f"{_short(value)} holds control characters (escapes, newlines, NUL, "
                  "bidi controls)")
    key = values.pop("key")
    identity = cls(**values)
    if identity.key != key:
        _fail(f"{where}.key", f"{_short(key)} is not the key of its fields ({identity.key})")
    return identity


@dataclass(frozen=True)
class Export:
    """A whole `kgen db export`, checked before anything is written: the identities by key, and
    each list's (index, record)."""
    devices: dict[str, DeviceIdentity]
    builds: dict[str, BuildIdentity]
    measurements: list[tuple[int, Stored]]
    winners: list[tuple[int, Stored]]

    @classmethod
    def from_record(cls, data: dict, where: str = "import") -> "Export":
        top = [f.name for f in dataclasses.fields(cls)]
        if type(data) is not dict:
            _fail(where, f"expected an object with exactly the fields {sorted(['format', 'schema', *top])}")
        if data.get("format") == EXPORT_FORMAT and "schema" in data and data["schema"] != SCHEMA_VERSION:
            schema = data["schema"]
            if type(schema) is not int:
                _fail(f"{where}.schema", f"{_short(schema)} is not an integer")
            _fail(f"{where}.schema", f"{EXPORT_FORMAT!r} schema {schema} is " + (
                f"an older kgen's export; this kgen imports schema {SCHEMA_VERSION} only and leaves "
                "older timings unused: `kgen tune` times those classes again" if schema < SCHEMA_VERSION
                else f"a newer kgen's export; this kgen imports schema {SCHEMA_VERSION}: upgrade kgen"))
        if set(data) != {"format", "schema", *top}:
            _fail(where, f"expected an object with exactly the fields {sorted(['format', 'schema', *top])}")
        if data["format"] != EXPORT_FORMAT:
            _fail(f"{where}.format", f"{_short(data['format'])} is not {EXPORT_FORMAT!r}")
        for name in top:
            if type(data[name]) is not list:
                _fail(f"{where}.{name}", f"expected a list, got {type(data[name]).__name__}")
        found: dict[str, dict] = {}
        for table, kind in (("devices", DeviceIdentity), ("builds", BuildIdentity)):
            found[table] = {}
            for i, rec in enumerate(data[table]):
                identity = identity_from_record(kind, rec, f"{table}[{i}]")
                if identity.key in found[table]:
                    _fail(f"{table}[{i}].key", f"{identity.key} is a duplicate")
                found[table][identity.key] = identity
        for table, kind in (("measurements", Measurement), ("winners", Winner)):
            seen, found[table] = set(), []
            for i, rec in enumerate(data[table]):
                stored = Stored.from_record(rec, f"{table}[{i}]", kind)
                if stored.key in seen:
                    _fail(f"{table}[{i}]", f"a second record for {_short(stored.key)}")
                seen.add(stored.key)
                found[table].append((i, stored))
        return cls(**found)
