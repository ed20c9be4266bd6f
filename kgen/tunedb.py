"""The tuning database: every candidate's measurement and each class's winner, per device and build.

SQLite (WAL, busy timeout, one transaction per write) so that several tuner processes can write
at once and an interrupted tune keeps what it measured. Keys: DeviceIdentity.key,
BuildIdentity.key, ProblemClass.key, and (variant uri, splits) for a candidate. Each measurement
and winner also holds the kernel digest it was timed with (identity.kernel_digest); its readers
use it only while that is still the variant's (identity.is_current).

Schema 1 (its builds keyed by a hash of every template file) is read and upgraded, as a DB file
on open and as an export on import: a record whose build's template hash is today's gets its
kernel's digest (its kernels render as they did then), any other an empty one (kept, never used).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import sqlite3
import threading
import time
import typing
from dataclasses import dataclass
from pathlib import Path

from .errors import KgenError
from .identity import BuildIdentity, DeviceIdentity
from .problem import ProblemClass

SCHEMA_VERSION = 2
STATUSES = ("ok", "wrong", "failed")  # timed; failed the reference check; compile/pipeline/run error
EXPORT_FORMAT = "kgen-tuning-db"
MAX_TEXT = 4096          # longest string stored or imported (a longer `reason` is cut on record)
BUSY_TIMEOUT_S = 30.0
_MAX_INT = 2**63 - 1     # SQLite's INTEGER range; identity numbers are never negative


class TuningDBError(KgenError):
    """The tuning DB cannot be used (corrupt, newer schema, bad import); says how to recover."""


@dataclass(frozen=True)
class Measurement:
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


@dataclass(frozen=True)
class Winner:
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


# --- schema: the problem class is stored as its key and as columns, so winners_like is indexed ---
_CLASS_COLUMNS = ("head_k", "head_v", "k_type", "v_type", "features", "acc",
                  "nq_bucket", "nkv_bucket", "gqa_bucket")
_CLASS_SQL = ("head_k INTEGER NOT NULL, head_v INTEGER NOT NULL, k_type TEXT NOT NULL, "
              "v_type TEXT NOT NULL, features TEXT NOT NULL, acc INTEGER NOT NULL, "
              "nq_bucket INTEGER NOT NULL, nkv_bucket INTEGER NOT NULL, gqa_bucket INTEGER NOT NULL")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (key TEXT PRIMARY KEY, name TEXT NOT NULL, identity TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS builds (key TEXT PRIMARY KEY, identity TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS measurements (
  device_key TEXT NOT NULL, build_key TEXT NOT NULL, problem TEXT NOT NULL, {_CLASS_SQL},
  variant TEXT NOT NULL, splits INTEGER NOT NULL, status TEXT NOT NULL, median_us REAL, spread_us REAL,
  runs INTEGER NOT NULL, nmse REAL, reason TEXT NOT NULL, shape TEXT NOT NULL, kernel TEXT NOT NULL,
  created_at REAL NOT NULL, UNIQUE (device_key, build_key, problem, variant, splits));
CREATE TABLE IF NOT EXISTS winners (
  device_key TEXT NOT NULL, build_key TEXT NOT NULL, problem TEXT NOT NULL, {_CLASS_SQL},
  variant TEXT NOT NULL, splits INTEGER NOT NULL, median_us REAL NOT NULL, spread_us REAL NOT NULL,
  runner_up TEXT, runner_up_us REAL, candidates INTEGER NOT NULL, strategy TEXT NOT NULL,
  kernel TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (device_key, build_key, problem));
CREATE INDEX IF NOT EXISTS winners_like ON winners
  (device_key, build_key, head_k, head_v, k_type, v_type, features, acc);
"""
_COLUMNS_SQL = ("SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p "
                "WHERE m.type = 'table' ORDER BY m.name, p.cid")


def _columns(conn: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    tables: dict[str, list[str]] = {}
    for table, column in conn.execute(_COLUMNS_SQL):
        tables.setdefault(table, []).append(column)
    return {t: tuple(c) for t, c in tables.items()}


@functools.cache
def _expected_columns() -> dict[str, tuple[str, ...]]:
    """The tables _SCHEMA makes, read back from SQLite itself so the schema is written once."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(_SCHEMA)
    return _columns(conn)


def _create_tables(conn: sqlite3.Connection) -> None:
    """_SCHEMA's tables, statement by statement inside the caller's transaction (executescript
    would COMMIT it)."""
    for statement in filter(str.strip, _SCHEMA.split(";")):
        conn.execute(statement)


def _record_of(row: sqlite3.Row, names) -> dict:
    """A measurement or winner row as its export record (fields `names`)."""
    return {n: row[n + "_key" if n in ("device", "build") else n] for n in names}


def _v1_columns() -> dict[str, tuple[str, ...]]:
    """Schema 1's tables: today's without the kernel digests."""
    return {t: tuple(c for c in cols if c != "kernel") for t, cols in _expected_columns().items()}


def _class_values(problem: ProblemClass) -> tuple:
    return (problem.head_k, problem.head_v, problem.k_type.label, problem.v_type.label,
            "+".join(problem.key_features), problem.acc, problem.nq_bucket, problem.nkv_bucket,
            problem.gqa_bucket)


# --- validation: one checker for record(), set_winner() and import_json(), so the DB only ever
# holds what an import would accept, and an export always imports again ---------------------
def _fail(where: str, message: str) -> typing.NoReturn:
    raise TuningDBError(f"{where}: {message}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_value(where: str, value, hint):
    """Check one field against its type hint: ints are ints (not bools) in SQLite's range,
    floats finite and non-negative, strings at most MAX_TEXT characters."""
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


def _check_fields(where: str, record, hints: dict[str, object]) -> dict:
    if type(record) is not dict:
        _fail(where, f"expected an object, got {type(record).__name__}")
    unknown = [k for k in record if k not in hints]
    if unknown:
        _fail(where, f"unknown field(s) {_short(sorted(map(str, unknown)))}")
    missing = [k for k in hints if k not in record]
    if missing:
        _fail(where, f"missing field(s) {missing}")
    return {k: _check_value(f"{where}.{k}", record[k], hint) for k, hint in hints.items()}


def _check_choice(where: str, problem: ProblemClass, uri: str, splits: int) -> None:
    """A variant (with its split count) that computes `problem`: same heads, types, acc, features."""
    from .variant import Variant  # imports the path modules; only needed when checking
    try:
        v = Variant.parse(uri)
    except (ValueError, ArithmeticError) as exc:
        _fail(where, f"{_short(uri)} is not a valid variant: {str(exc)[:200]}")
    same = {"head_k": v.head_k == problem.head_k, "head_v": v.head_v == problem.head_v,
            "k_type": v.k_type == problem.k_type, "v_type": v.v_type == problem.v_type,
            "acc": v.acc == problem.acc,
            "features": {*v.features} - {"split_k"} == {*problem.features} - {"split_k"},
            "v_in_k": problem.v_in_k or not v.v_in_k}
    wrong = [name for name, ok in same.items() if not ok]
    if wrong:
        _fail(where, f"{uri} does not match problem class {problem.key!r} in {', '.join(wrong)}")
    if splits < 1 or v.split_k != (splits > 1):
        _fail(where, f"splits={splits} with {uri}: splits >= 1, and > 1 exactly for split_k variants")


def _hints(cls) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    if "problem" in hints:
        hints["problem"] = str   # stored and exported as ProblemClass.key
    return hints


_IDENTITY_HINTS = {"devices": {"key": str, **_hints(DeviceIdentity)},
                   "builds": {"key": str, **_hints(BuildIdentity)}}
_RECORD_HINTS = {name: {"device": str, "build": str, **_hints(cls), "created_at": float}
                 for name, cls in (("measurements", Measurement), ("winners", Winner))}


def _check_record(table: str, where: str, record) -> tuple[dict, ProblemClass]:
    """Validate an exported measurement or winner record; returns it with its problem class."""
    rec = _check_fields(where, record, _RECORD_HINTS[table])
    try:
        problem = ProblemClass.parse(rec["problem"])
    except ValueError as exc:
        _fail(f"{where}.problem", str(exc)[:200])
    _check_choice(f"{where}.variant", problem, rec["variant"], rec["splits"])
    if table == "measurements":
        if rec["status"] not in STATUSES:
            _fail(f"{where}.status", f"{_short(rec['status'])} is not one of {', '.join(STATUSES)}")
        if (rec["median_us"] is None) == (rec["status"] == "ok"):
            _fail(f"{where}.median_us", "a time exactly when status is 'ok'")
    else:
        if (rec["runner_up"] is None) != (rec["runner_up_us"] is None):
            _fail(f"{where}.runner_up_us", "set exactly when runner_up is")
        if rec["runner_up"] is not None:
            uri, at, splits = rec["runner_up"].rpartition("@")
            if not at or not splits.isdigit() or len(splits) > 6:
                uri, splits = rec["runner_up"], "1"
            _check_choice(f"{where}.runner_up", problem, uri, int(splits))
    return rec, problem


def _to_record(device: DeviceIdentity, build: BuildIdentity, item) -> dict:
    """A Measurement or Winner as its export record; numpy numbers become Python ones."""
    rec = {"device": device.key, "build": build.key}
    for f in dataclasses.fields(item):
        value = getattr(item, f.name)
        if f.name == "problem":
            value = value.key
        elif isinstance(value, str) and f.name in ("reason", "shape"):
            value = value[:MAX_TEXT]   # a compile log may be long; its start says why
        elif hasattr(value, "item") and not isinstance(value, str):
            value = value.item()       # a numpy scalar
        rec[f.name] = value
    rec["created_at"] = time.time()
    return rec


_TOP_HINTS = {"format": str, "schema": int, **{t: list for t in (*_IDENTITY_HINTS, *_RECORD_HINTS)}}
_V1_BUILD_HINTS = {"key": str, "kgen_version": str, "template_hash": str, "compiler": str}


def _check_top(data) -> None:
    if type(data) is not dict or set(data) != set(_TOP_HINTS):
        _fail("import", f"expected an object with exactly the fields {sorted(_TOP_HINTS)}")
    if data["format"] != EXPORT_FORMAT or type(data["schema"]) is not int or data["schema"] not in (1, SCHEMA_VERSION):
        _fail("import", f"format {_short(data['format'])} schema {_short(data['schema'])}: this kgen "
                        f"reads format {EXPORT_FORMAT!r} schema 1 or {SCHEMA_VERSION}")
    for name, hint in _TOP_HINTS.items():
        if hint is list and type(data[name]) is not list:
            _fail(f"import.{name}", f"expected a list, got {type(data[name]).__name__}")


def _upgrade_v1(data: dict) -> dict:
    """A schema-1 export as schema 2. Its builds lose the template hash (several may become one
    build); records of a build whose template hash is today's get their kernel's digest, others
    an empty one. Of records that now share a key, an adopted one wins, else the latest."""
    from .identity import _digest, kernel_digest
    from .render import template_hash
    today = template_hash()
    builds: dict[str, tuple[BuildIdentity, bool]] = {}
    for i, record in enumerate(data["builds"]):
        rec = _check_fields(f"builds[{i}]", record, _V1_BUILD_HINTS)
        fields = {k: v for k, v in rec.items() if k != "key"}
        if _digest(fields) != rec["key"] or rec["key"] in builds:
            _fail(f"builds[{i}].key", f"{_short(rec['key'])} is a duplicate or not the key of its fields")
        builds[rec["key"]] = (BuildIdentity(rec["kgen_version"], rec["compiler"]),
                              rec["template_hash"] == today)
    out = {**data, "schema": SCHEMA_VERSION,
           "builds": list({b.key: {"key": b.key, **b.as_dict()} for b, _ in builds.values()}.values())}
    for table, hints in _RECORD_HINTS.items():
        v1_hints = {k: h for k, h in hints.items() if k != "kernel"}
        chosen: dict[tuple, tuple[tuple, dict]] = {}
        for i, record in enumerate(data[table]):
            rec = _check_fields(f"{table}[{i}]", record, v1_hints)
            if rec["build"] not in builds:
                _fail(f"{table}[{i}].build", f"{_short(rec['build'])} is not in builds")
            build, adopted = builds[rec["build"]]
            rec = {**rec, "build": build.key, "kernel": kernel_digest(rec["variant"]) if adopted else ""}
            key = (rec["device"], rec["build"], rec["problem"]) + \
                ((rec["variant"], rec["splits"]) if table == "measurements" else ())
            rank = (adopted, rec["created_at"])
            if key not in chosen or rank > chosen[key][0]:
                chosen[key] = (rank, rec)
        out[table] = [rec for _, rec in chosen.values()]
    return out


def _parse_export(data) -> tuple[dict[str, dict], dict[str, list]]:
    """Check a whole export before anything is written: the identities by table and key, and each
    table's (index, record, problem class). Raises TuningDBError naming the record and field."""
    _check_top(data)
    if data["schema"] == 1:
        data = _upgrade_v1(data)
    identities: dict[str, dict] = {"devices": {}, "builds": {}}
    for table, cls in (("devices", DeviceIdentity), ("builds", BuildIdentity)):
        for i, record in enumerate(data[table]):
            where = f"{table}[{i}]"
            rec = _check_fields(where, record, _IDENTITY_HINTS[table])
            identity = cls(**{k: v for k, v in rec.items() if k != "key"})
            if identity.key != rec["key"] or rec["key"] in identities[table]:
                _fail(f"{where}.key", f"{_short(rec['key'])} is a duplicate or not the key of its "
                                      f"fields ({identity.key})")
            identities[table][rec["key"]] = identity
    records: dict[str, list] = {}
    for table in _RECORD_HINTS:
        seen: set = set()
        records[table] = []
        for i, record in enumerate(data[table]):
            rec, problem = _check_record(table, f"{table}[{i}]", record)
            key = (rec["device"], rec["build"], rec["problem"]) + \
                ((rec["variant"], rec["splits"]) if table == "measurements" else ())
            if key in seen:
                _fail(f"{table}[{i}]", f"a second record for {_short(key)}")
            seen.add(key)
            records[table].append((i, rec, problem))
    return identities, records


class TuningDB:
    """Open with TuningDB(path) (default knobs.db_path()); use as a context manager or close()."""

    def __init__(self, path: Path | None = None):
        from . import knobs
        self.path = Path(path) if path is not None else knobs.db_path()
        self._lock = threading.Lock()   # one connection, shared by the threads of a process
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error as exc:
            raise TuningDBError(f"cannot open the tuning DB {self.path}: {exc}") from None
        self._conn.row_factory = sqlite3.Row
        try:
            with self._errors():
                self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                self._check_schema()   # first: a file that is not ours is left as it was
                self._use_wal()
                self._conn.execute("PRAGMA synchronous = NORMAL")   # in WAL: still never corrupts
        except BaseException:
            self._conn.close()
            raise

    # --- plumbing --------------------------------------------------------------------------
    def _corrupt(self, what: str) -> TuningDBError:
        return TuningDBError(f"the tuning DB {self.path} {what}; `kgen db reset` moves it aside "
                             "(to <name>.corrupt-<time>) and starts an empty one")

    @contextlib.contextmanager
    def _errors(self):
        """SQLite errors as TuningDBError naming the file and, for a damaged one, the fix."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise TuningDBError(f"the tuning DB {self.path} stayed locked by another process "
                                    f"for {BUSY_TIMEOUT_S:.0f} s: {exc}") from None
            raise self._corrupt(f"cannot be used ({exc})") from exc
        except sqlite3.DatabaseError as exc:
            raise self._corrupt(f"is damaged or not a tuning DB ({exc})") from exc

    @contextlib.contextmanager
    def _write(self):
        """One short BEGIN IMMEDIATE transaction: concurrent writers queue on the busy timeout,
        and an interrupt rolls back only the write in progress."""
        with self._lock, self._errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._lock, self._errors():
            return self._conn.execute(sql, params).fetchall()

    def _check_schema(self) -> None:
        tables = _columns(self._conn)
        if not tables:   # a new (or empty) file: create the schema; a racing opener may too
            with self._write() as conn:
                _create_tables(conn)
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
            tables = _columns(self._conn)
        version = None
        if tables.get("meta") == _expected_columns()["meta"]:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = row[0] if row else None
        if version is not None and str(version).isdigit() and int(version) > SCHEMA_VERSION:
            raise TuningDBError(f"the tuning DB {self.path} has schema version {version}, written by "
                                f"a newer kgen; this kgen reads version {SCHEMA_VERSION}: upgrade kgen, "
                                "set KGEN_DB to another file, or `kgen db reset` to move it aside")
        if version == "1" and tables == _v1_columns():
            self._upgrade_file()
            return
        if version != str(SCHEMA_VERSION) or tables != _expected_columns():
            raise self._corrupt("does not hold kgen's tables (schema version "
                                f"{version!r}, tables {sorted(tables)})")

    def _upgrade_file(self) -> None:
        """Schema 1 -> 2 in place, in one transaction (an interrupt leaves schema 1): the tables
        are read as an export, upgraded as an import would be, and written back."""
        with self._write() as conn:
            if conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] != "1":
                return   # a racing opener upgraded it first
            data: dict = {"format": EXPORT_FORMAT, "schema": 1}
            for table in ("devices", "builds"):
                data[table] = [{"key": r["key"], **json.loads(r["identity"])}
                               for r in conn.execute(f"SELECT key, identity FROM {table}")]
            for table, hints in _RECORD_HINTS.items():
                names = [n for n in hints if n != "kernel"]
                data[table] = [_record_of(r, names) for r in conn.execute(f"SELECT * FROM {table}")]
            try:
                identities, records = _parse_export(data)
            except TuningDBError as exc:
                raise self._corrupt(f"holds schema-1 data this kgen cannot upgrade ({exc})") from None
            for table in ("measurements", "winners", "builds"):
                conn.execute(f"DROP TABLE {table}")
            _create_tables(conn)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            self._put_export(conn, identities, records)

    def _use_wal(self) -> None:
        """WAL: readers never wait for the writer. It persists in the file, so this is a no-op once
        set; but the first switch needs the file alone, and SQLite answers openers racing on a new
        file with an immediate "locked" (no busy wait), so wait here."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    @staticmethod
    def _put_identity(conn, identity: DeviceIdentity | BuildIdentity) -> None:
        doc = json.dumps(identity.as_dict(), sort_keys=True)
        if isinstance(identity, DeviceIdentity):   # its name, a column for `kgen db show`'s order
            conn.execute("INSERT OR REPLACE INTO devices VALUES (?, ?, ?)", (identity.key, identity.name, doc))
        else:
            conn.execute("INSERT OR REPLACE INTO builds VALUES (?, ?)", (identity.key, doc))

    @staticmethod
    def _put(conn, table: str, rec: dict, problem: ProblemClass) -> None:
        names = [n for n in _RECORD_HINTS[table] if n not in ("device", "build", "problem")]
        columns = ["device_key", "build_key", "problem", *_CLASS_COLUMNS, *names]
        values = [rec["device"], rec["build"], rec["problem"], *_class_values(problem),
                  *(rec[n] for n in names)]
        conn.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) "
                     f"VALUES ({', '.join('?' * len(columns))})", values)

    @classmethod
    def _put_export(cls, conn, identities: dict[str, dict], records: dict[str, list]) -> None:
        """Write what _parse_export checked: its identities, then its records."""
        for found in identities.values():
            for identity in found.values():
                cls._put_identity(conn, identity)
        for table, items in records.items():
            for _, rec, problem in items:
                cls._put(conn, table, rec, problem)

    def _item(self, cls, row: sqlite3.Row):
        values = {f.name: row[f.name] for f in dataclasses.fields(cls)}
        try:
            return cls(**{**values, "problem": ProblemClass.parse(row["problem"])})
        except ValueError as exc:   # a row edited by hand: refuse it rather than guess
            raise self._corrupt(f"holds an unreadable {cls.__name__} ({exc})") from None

    def _identity(self, cls, text: str):
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise self._corrupt(f"holds an unreadable {cls.__name__} ({exc})") from None

    # --- measurements and winners ------------------------------------------------------------
    def record(self, device: DeviceIdentity, build: BuildIdentity, m: Measurement) -> None:
        """Insert or replace the measurement of (device, build, class, variant, splits)."""
        rec, problem = _check_record("measurements", f"measurement {m.variant}@{m.splits}",
                                     _to_record(device, build, m))
        with self._write() as conn:
            self._put_identity(conn, device)
            self._put_identity(conn, build)
            self._put(conn, "measurements", rec, problem)

    def forget(self, device: DeviceIdentity, build: BuildIdentity, problem: ProblemClass,
               variant: str, splits: int) -> None:
        """Delete one measurement (the tuner's crash marker, when an interrupt ends its check)."""
        with self._write() as conn:
            conn.execute("DELETE FROM measurements WHERE device_key = ? AND build_key = ? AND problem = ? "
                         "AND variant = ? AND splits = ?", (device.key, build.key, problem.key, variant, splits))

    def measurements(self, device: DeviceIdentity, build: BuildIdentity,
                     problem: ProblemClass) -> list[Measurement]:
        rows = self._query("SELECT * FROM measurements WHERE device_key = ? AND build_key = ? "
                           "AND problem = ? ORDER BY variant, splits", (device.key, build.key, problem.key))
        return [self._item(Measurement, r) for r in rows]

    def set_winner(self, device: DeviceIdentity, build: BuildIdentity, w: Winner) -> None:
        rec, problem = _check_record("winners", f"winner of {w.problem.key!r}", _to_record(device, build, w))
        with self._write() as conn:
            self._put_identity(conn, device)
            self._put_identity(conn, build)
            self._put(conn, "winners", rec, problem)

    def winner(self, device: DeviceIdentity, build: BuildIdentity, problem: ProblemClass) -> Winner | None:
        rows = self._query("SELECT * FROM winners WHERE device_key = ? AND build_key = ? AND problem = ?",
                           (device.key, build.key, problem.key))
        return self._item(Winner, rows[0]) if rows else None

    def winners_like(self, device: DeviceIdentity, build: BuildIdentity,
                     problem: ProblemClass) -> list[Winner]:
        """Winners with the same head sizes, KV types, features and acc, any buckets."""
        rows = self._query("SELECT * FROM winners WHERE device_key = ? AND build_key = ? AND head_k = ? "
                           "AND head_v = ? AND k_type = ? AND v_type = ? AND features = ? AND acc = ? "
                           "ORDER BY nq_bucket, nkv_bucket, gqa_bucket",
                           (device.key, build.key, *_class_values(problem)[:6]))
        return [self._item(Winner, r) for r in rows]

    def winners(self, device: DeviceIdentity | None = None,
                build: BuildIdentity | None = None) -> list[tuple[DeviceIdentity, BuildIdentity, Winner]]:
        rows = self._query(
            "SELECT w.*, d.identity AS device_identity, b.identity AS build_identity FROM winners w "
            "JOIN devices d ON d.key = w.device_key JOIN builds b ON b.key = w.build_key "
            "WHERE (:device IS NULL OR w.device_key = :device) AND (:build IS NULL OR w.build_key = :build) "
            "ORDER BY d.name, w.device_key, w.build_key, w.problem",
            {"device": device and device.key, "build": build and build.key})
        return [(self._identity(DeviceIdentity, r["device_identity"]),
                 self._identity(BuildIdentity, r["build_identity"]), self._item(Winner, r)) for r in rows]

    # --- export / import ---------------------------------------------------------------------
    def export_json(self) -> dict:
        out: dict = {"format": EXPORT_FORMAT, "schema": SCHEMA_VERSION}
        for table, cls in (("devices", DeviceIdentity), ("builds", BuildIdentity)):
            out[table] = [{"key": r["key"], **self._identity(cls, r["identity"]).as_dict()}
                          for r in self._query(f"SELECT key, identity FROM {table} ORDER BY key")]
        for table, hints in _RECORD_HINTS.items():
            rows = self._query(f"SELECT * FROM {table} ORDER BY device_key, build_key, problem, variant, splits")
            out[table] = [_record_of(r, hints) for r in rows]
        return out

    def import_json(self, data: dict) -> int:
        """Merge an export into this DB, all or nothing; every field is checked before anything is
        written. Returns how many records (devices, builds, measurements, winners) it imported."""
        identities, records = _parse_export(data)
        with self._write() as conn:
            for table, items in records.items():
                for i, rec, _ in items:
                    for field, ref in (("device", "devices"), ("build", "builds")):
                        if rec[field] not in identities[ref] and not conn.execute(
                                f"SELECT 1 FROM {ref} WHERE key = ?", (rec[field],)).fetchone():
                            _fail(f"{table}[{i}].{field}", f"{_short(rec[field])} is not in {ref}")
            self._put_export(conn, identities, records)
        return sum(map(len, identities.values())) + sum(map(len, records.values()))

    # --- lifetime ----------------------------------------------------------------------------
    @classmethod
    def reset(cls, path: Path | None = None) -> Path | None:
        """Move the DB file (and its WAL sidecars) aside to `<name>.corrupt-<time>` and start an
        empty one; returns where it went, or None if there was no file."""
        from . import knobs
        path = Path(path) if path is not None else knobs.db_path()
        cached = _DEFAULT.pop(path, None)
        if cached is not None and _DEFAULT_PID == os.getpid():
            cached.close()
        aside = None
        if path.exists():
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside = path.with_name(f"{path.name}.corrupt-{stamp}")
            n = 1
            while aside.exists():
                n += 1
                aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
            os.replace(path, aside)
        # A WAL left beside a new file would be replayed into it: move it with its database.
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                if aside is None:
                    side.unlink()
                else:
                    os.replace(side, aside.with_name(aside.name + suffix))
        cls(path).close()
        return aside

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "TuningDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# One cached connection per process and path: the dispatcher opens the DB on every plan.
_DEFAULT: dict[Path, TuningDB] = {}
_DEFAULT_PID = os.getpid()


def open_default(path: Path | None = None) -> TuningDB:
    """The process's shared TuningDB for `path` (default knobs.db_path()). After a fork the
    parent's connections are dropped unclosed (closing them could disturb the parent's locks)."""
    global _DEFAULT_PID
    from . import knobs
    path = Path(path) if path is not None else knobs.db_path()
    if _DEFAULT_PID != os.getpid():
        _DEFAULT.clear()
        _DEFAULT_PID = os.getpid()
    db = _DEFAULT.get(path)
    if db is None or db._conn is None:
        db = _DEFAULT[path] = TuningDB(path)
    return db
