"""The tuning database: every candidate's measurement and each class's winner, per device and build.

SQLite (WAL, busy timeout, one transaction per write) so that several tuner processes can write
at once and an interrupted tune keeps what it measured. Keys: DeviceIdentity.key,
BuildIdentity.key, ProblemClass.key, and (variant uri, splits) for a candidate. Each measurement
and winner also holds the kernel digest it was timed with (identity.kernel_digest); its readers
use it only while that is still the variant's (identity.is_current).

A tuner marks each candidate before its check and each later timing under its lease (checks.py,
lease.py); a candidate whose check or timing died with its process CRASH_STRIKES times is stored
as failed. A class's winner is decided by the tuner's rule from every stored measurement of the
class, in the transaction that stores one, so that concurrent tuners agree whoever writes last.
On open, PRAGMA quick_check warns (once per file) of damage that no query has met yet.

Tables are named by their schema (`winners_v2`). A file written by another schema keeps its
tables and its rows: this kgen creates its own beside them and never reads the others, nor
imports another schema's export. A decision not carried over costs speed, never correctness:
`kgen tune` times it again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

from ..identity import BuildIdentity, DeviceIdentity
from ..problem import ProblemClass
from . import checks, lease
from .checks import CANDIDATE_SQL, KEY_SQL, CheckMarkers, Claim  # noqa: F401 (Claim: store.Claim)
from .records import EXPORT_FORMAT, SCHEMA_VERSION, Export, Measurement, Stored, TuningDBError, Winner, _fail, _short

BUSY_TIMEOUT_S = 30.0

# --- schema: the problem class is stored as its key and as columns, so winners_like is indexed.
# `meta` (any schema's, never changed) marks a kgen file and holds the schema that created it.
_CLASS_COLUMNS = ("head_k", "head_v", "k_type", "v_type", "features", "acc",
                  "nq_bucket", "nkv_bucket", "gqa_bucket")
_CLASS_SQL = ("head_k INTEGER NOT NULL, head_v INTEGER NOT NULL, k_type TEXT NOT NULL, "
              "v_type TEXT NOT NULL, features TEXT NOT NULL, acc INTEGER NOT NULL, "
              "nq_bucket INTEGER NOT NULL, nkv_bucket INTEGER NOT NULL, gqa_bucket INTEGER NOT NULL")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
CREATE TABLE IF NOT EXISTS devices_v2 (key TEXT PRIMARY KEY, name TEXT NOT NULL, identity TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS builds_v2 (key TEXT PRIMARY KEY, identity TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS measurements_v2 (
  device TEXT NOT NULL, build TEXT NOT NULL, problem TEXT NOT NULL, {_CLASS_SQL},
  variant TEXT NOT NULL, splits INTEGER NOT NULL, status TEXT NOT NULL, median_us REAL, spread_us REAL,
  runs INTEGER NOT NULL, nmse REAL, reason TEXT NOT NULL, shape TEXT NOT NULL, kernel TEXT NOT NULL,
  created_at REAL NOT NULL, UNIQUE (device, build, problem, variant, splits));
CREATE TABLE IF NOT EXISTS winners_v2 (
  device TEXT NOT NULL, build TEXT NOT NULL, problem TEXT NOT NULL, {_CLASS_SQL},
  variant TEXT NOT NULL, splits INTEGER NOT NULL, median_us REAL NOT NULL, spread_us REAL NOT NULL,
  runner_up TEXT, runner_up_us REAL, candidates INTEGER NOT NULL, strategy TEXT NOT NULL,
  kernel TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (device, build, problem));
CREATE INDEX IF NOT EXISTS winners_v2_like ON winners_v2
  (device, build, head_k, head_v, k_type, v_type, features, acc);
{checks.SCHEMA}"""
# A winner rule: every stored measurement of a class -> its winner, or None (nothing passed).
Rule = Callable[[list[Measurement]], "Winner | None"]
_warned_damage: set[str] = set()


_KINDS = {"measurements": Measurement, "winners": Winner}   # export list -> record type
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


def _class_values(problem: ProblemClass) -> tuple:
    return (problem.head_k, problem.head_v, problem.k_type.label, problem.v_type.label,
            "+".join(problem.key_features), problem.acc, problem.nq_bucket, problem.nkv_bucket,
            problem.gqa_bucket)


class TuningDB(CheckMarkers):
    """Open with TuningDB(path) (default knobs.db_path()); use as a context manager or close()."""

    def __init__(self, path: Path | None = None):
        from .. import knobs
        self.path = Path(path) if path is not None else knobs.db_path()
        self._lock = threading.Lock()   # one connection, shared by the threads of a process
        self._lease: lease.Lease | None = None
        self._lease_users = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error as exc:
            raise TuningDBError(f"cannot open the tuning DB {self.path}: {exc}") from None
        self._conn.row_factory = sqlite3.Row
        self._file = self._file_id()
        try:
            with self._errors():
                self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                self._check_schema()   # first: a file that is not ours is left as it was
                self._use_wal()
                self._conn.execute("PRAGMA synchronous = NORMAL")   # in WAL: still never corrupts
                self._quick_check()
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

    def _file_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def moved(self) -> bool:
        """Whether the file at self.path is no longer the one this connection has open (`kgen db
        reset` moved it aside, or it was deleted)."""
        return self._file_id() != self._file

    def _quick_check(self) -> None:
        """Damage on pages no query has read yet is silent until one does: say so once per file."""
        problems = [row[0] for row in self._conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"] and str(self.path) not in _warned_damage:
            _warned_damage.add(str(self.path))
            warnings.warn(f"kgen: the tuning DB {self.path} is damaged ({'; '.join(problems)[:300]}); its "
                          "readable rows are used, but `kgen db reset` moves it aside and starts an empty one",
                          stacklevel=3)

    @contextlib.contextmanager
    def _write(self):
        """One short BEGIN IMMEDIATE transaction: concurrent writers queue on the busy timeout,
        and an interrupt rolls back only the write in progress. A file moved aside under this
        connection is not written: the writes would be lost with it."""
        with self._lock, self._errors():
            if self.moved():
                raise TuningDBError(f"the tuning DB {self.path} was moved aside or replaced while this "
                                    "process had it open (`kgen db reset`?); nothing more is written to "
                                    "the old file: run the command again")
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
        """A new file gets this schema's tables; a kgen file (its `meta` says which schema made it)
        gets them beside any other schema's, which stay as they are."""
        tables, expected = _columns(self._conn), _expected_columns()
        if tables:
            version = None
            if tables.get("meta") == expected["meta"]:
                row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                version = row[0] if row else None
            if not str(version).isdigit() or any(tables.get(t, cols) != cols for t, cols in expected.items()):
                raise self._corrupt("does not hold kgen's tables (schema version "
                                    f"{version!r}, tables {sorted(tables)})")
        if not expected.keys() <= tables.keys():   # a racing opener may create them too
            with self._write() as conn:
                for statement in filter(str.strip, _SCHEMA.split(";")):   # not executescript:
                    conn.execute(statement)                               # it would COMMIT

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
            conn.execute("INSERT OR REPLACE INTO devices_v2 VALUES (?, ?, ?)", (identity.key, identity.name, doc))
        else:
            conn.execute("INSERT OR REPLACE INTO builds_v2 VALUES (?, ?)", (identity.key, doc))

    @staticmethod
    def _put(conn, table: str, stored: Stored) -> None:
        rec = stored.to_record()
        columns = [*rec, *_CLASS_COLUMNS]
        conn.execute(f"INSERT OR REPLACE INTO {table}_v2 ({', '.join(columns)}) VALUES "
                     f"({', '.join('?' * len(columns))})", [*rec.values(), *_class_values(stored.item.problem)])

    def _put_checked(self, conn, device: DeviceIdentity, build: BuildIdentity, table: str, item) -> None:
        """Check `item` as an import would, then write it with its device and build."""
        where = (f"measurement {item.variant}@{item.splits}" if table == "measurements"
                 else f"winner of {item.problem.key!r}")
        rec = {"device": device.key, "build": build.key, **item.to_record(), "created_at": time.time()}
        stored = Stored.from_record(rec, where, _KINDS[table])
        self._put_identity(conn, device)
        self._put_identity(conn, build)
        self._put(conn, table, stored)

    def _item(self, cls, row: sqlite3.Row):
        """A row as its Measurement or Winner. Not from_record: a stored variant that no longer
        parses is the dispatcher's to skip (identity.kernel_digest), not a reason to refuse the DB."""
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
    def record(self, device: DeviceIdentity, build: BuildIdentity, m: Measurement, *,
               owner: str | None = None, rule: Rule | None = None) -> None:
        """Insert or replace the measurement of (device, build, class, variant, splits). `owner`:
        the lease whose marker of this candidate (claim) it replaces. `rule`: the class's winner
        rule; a stored winner of the same timing shape is decided again with it, in this
        transaction, so a later measurement that beats it (or one that now fails) moves it."""
        with self._write() as conn:
            self._put_checked(conn, device, build, "measurements", m)
            key = (device.key, build.key, m.problem.key, m.variant, m.splits)
            if owner is not None:
                checks.drop(conn, key, owner)
            if rule is not None:
                self._redecide(conn, device, build, m.problem, rule, m.shape)

    def measurements(self, device: DeviceIdentity, build: BuildIdentity,
                     problem: ProblemClass) -> list[Measurement]:
        rows = self._query(f"SELECT * FROM measurements_v2 WHERE {KEY_SQL} ORDER BY variant, splits",
                           (device.key, build.key, problem.key))
        return [self._item(Measurement, r) for r in rows]

    def measurement(self, device: DeviceIdentity, build: BuildIdentity, problem: ProblemClass,
                    variant: str, splits: int) -> Measurement | None:
        rows = self._query(f"SELECT * FROM measurements_v2 WHERE {CANDIDATE_SQL}",
                           (device.key, build.key, problem.key, variant, splits))
        return self._item(Measurement, rows[0]) if rows else None

    def set_winner(self, device: DeviceIdentity, build: BuildIdentity, w: Winner) -> None:
        """Store `w` as it is (an import's way); a tuner decides with decide()."""
        with self._write() as conn:
            self._put_checked(conn, device, build, "winners", w)

    def decide(self, device: DeviceIdentity, build: BuildIdentity, problem: ProblemClass,
               rule: Rule) -> Winner | None:
        """Store and return the winner that `rule` picks from every stored measurement of the
        class, in one transaction; None (and the stored winner left as it is) if nothing passed."""
        with self._write() as conn:
            w = rule(self._class_measurements(conn, device, build, problem))
            if w is not None:
                self._put_checked(conn, device, build, "winners", w)
            return w

    def _class_measurements(self, conn, device, build, problem) -> list[Measurement]:
        rows = conn.execute(f"SELECT * FROM measurements_v2 WHERE {KEY_SQL} ORDER BY variant, splits",
                            (device.key, build.key, problem.key)).fetchall()
        return [self._item(Measurement, r) for r in rows]

    def _redecide(self, conn, device, build, problem, rule: Rule, shape: str) -> None:
        """Decide a stored winner again if it was timed on `shape` (another timing shape of the
        class is another tune's question, left to it)."""
        held = conn.execute(f"SELECT variant, splits FROM winners_v2 WHERE {KEY_SQL}",
                            (device.key, build.key, problem.key)).fetchone()
        if held is None:
            return
        timed = conn.execute(f"SELECT shape FROM measurements_v2 WHERE {CANDIDATE_SQL}",
                             (device.key, build.key, problem.key, held["variant"], held["splits"])).fetchone()
        if timed is None or timed["shape"] != shape:
            return
        w = rule(self._class_measurements(conn, device, build, problem))
        if w is not None:
            self._put_checked(conn, device, build, "winners", w)
        else:   # nothing on its shape passes any more, itself included
            conn.execute(f"DELETE FROM winners_v2 WHERE {KEY_SQL}", (device.key, build.key, problem.key))

    def winner(self, device: DeviceIdentity, build: BuildIdentity, problem: ProblemClass) -> Winner | None:
        rows = self._query("SELECT * FROM winners_v2 WHERE device = ? AND build = ? AND problem = ?",
                           (device.key, build.key, problem.key))
        return self._item(Winner, rows[0]) if rows else None

    def winners_like(self, device: DeviceIdentity, build: BuildIdentity,
                     problem: ProblemClass) -> list[Winner]:
        """Winners with the same head sizes, KV types, features and acc, any buckets."""
        rows = self._query("SELECT * FROM winners_v2 WHERE device = ? AND build = ? AND head_k = ? "
                           "AND head_v = ? AND k_type = ? AND v_type = ? AND features = ? AND acc = ? "
                           "ORDER BY nq_bucket, nkv_bucket, gqa_bucket",
                           (device.key, build.key, *_class_values(problem)[:6]))
        return [self._item(Winner, r) for r in rows]

    def winners(self, device: DeviceIdentity | None = None,
                build: BuildIdentity | None = None) -> list[tuple[DeviceIdentity, BuildIdentity, Winner]]:
        rows = self._query(
            "SELECT w.*, d.identity AS device_identity, b.identity AS build_identity FROM winners_v2 w "
            "JOIN devices_v2 d ON d.key = w.device JOIN builds_v2 b ON b.key = w.build "
            "WHERE (:device IS NULL OR w.device = :device) AND (:build IS NULL OR w.build = :build) "
            "ORDER BY d.name, w.device, w.build, w.problem",
            {"device": device and device.key, "build": build and build.key})
        return [(self._identity(DeviceIdentity, r["device_identity"]),
                 self._identity(BuildIdentity, r["build_identity"]), self._item(Winner, r)) for r in rows]

    # --- export / import ---------------------------------------------------------------------
    def export_json(self) -> dict:
        out: dict = {"format": EXPORT_FORMAT, "schema": SCHEMA_VERSION}
        for table, cls in (("devices", DeviceIdentity), ("builds", BuildIdentity)):
            out[table] = [{"key": r["key"], **self._identity(cls, r["identity"]).as_dict()}
                          for r in self._query(f"SELECT key, identity FROM {table}_v2 ORDER BY key")]
        for table, kind in _KINDS.items():
            names = [*Stored.ENVELOPE, *kind.hints()]
            rows = self._query(f"SELECT * FROM {table}_v2 ORDER BY device, build, problem, variant, splits")
            out[table] = [{n: r[n] for n in names} for r in rows]
        return out

    def import_json(self, data: dict) -> int:
        """Merge an export into this DB, all or nothing; every field is checked before anything is
        written. Returns how many records (devices, builds, measurements, winners) it imported."""
        export = Export.from_record(data, "import")
        identities = {"devices": export.devices, "builds": export.builds}
        records = {table: getattr(export, table) for table in _KINDS}
        with self._write() as conn:
            for table, items in records.items():
                for i, stored in items:
                    for field, ref in (("device", "devices"), ("build", "builds")):
                        key = getattr(stored, field)
                        if key not in identities[ref] and not conn.execute(
                                f"SELECT 1 FROM {ref}_v2 WHERE key = ?", (key,)).fetchone():
                            _fail(f"{table}[{i}].{field}", f"{_short(key)} is not in {ref}")
            for found in identities.values():
                for identity in found.values():
                    self._put_identity(conn, identity)
            for table, items in records.items():
                for _, stored in items:
                    self._put(conn, table, stored)
        return sum(map(len, identities.values())) + sum(map(len, records.values()))

    # --- lifetime ----------------------------------------------------------------------------
    @classmethod
    def reset(cls, path: Path | None = None) -> Path | None:
        """Move the DB file (and its WAL sidecars) aside to `<name>.corrupt-<time>` and start an
        empty one; returns where it went, or None if there was no file. Refused while a tune holds
        a lease on it (it would go on writing to the moved file)."""
        from .. import knobs
        path = Path(path) if path is not None else knobs.db_path()
        if held := lease.holders(path):
            raise TuningDBError(f"the tuning DB {path} is in use by {len(held)} running tune(s) ("
                                + "; ".join(h.describe() for h in held[:4])
                                + "): let them finish or stop them, then reset")
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
    """The process's shared TuningDB for `path` (default knobs.db_path()); reopened when the file
    was moved aside (`kgen db reset`). After a fork the parent's connections are dropped unclosed
    (closing them could disturb the parent's locks)."""
    global _DEFAULT_PID
    from .. import knobs
    path = Path(path) if path is not None else knobs.db_path()
    if _DEFAULT_PID != os.getpid():
        _DEFAULT.clear()
        _DEFAULT_PID = os.getpid()
    db = _DEFAULT.get(path)
    if db is not None and db._conn is not None and db._lease is None and db.moved():
        db.close()   # reset by another process; a tune of this one's stops at its next write instead
    if db is None or db._conn is None:
        db = _DEFAULT[path] = TuningDB(path)
    return db
