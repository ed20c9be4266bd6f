"""Check markers: which candidate each tuning process is checking or timing (`checks_v2`, never
exported).

A tuner marks each candidate before its check, and before each later timing, under its lease
(lease.py): a marker whose owner still runs is a check or timing in flight; one whose owner died
is a strike against the candidate, which is measured again until it has CRASH_STRIKES, and then
stored as failed with crash_reason().
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass

from ..identity import BuildIdentity, DeviceIdentity
from ..problem import ProblemClass
from . import lease
from .records import CRASH_STRIKES, LEGACY_CRASH_MARK, Measurement, crash_reason, is_crash

# Rows of one class, and of one candidate of it; measurements_v2 and winners_v2 share the columns.
KEY_SQL = "device = ? AND build = ? AND problem = ?"
CANDIDATE_SQL = KEY_SQL + " AND variant = ? AND splits = ?"
SCHEMA = """
CREATE TABLE IF NOT EXISTS checks_v2 (
  device TEXT NOT NULL, build TEXT NOT NULL, problem TEXT NOT NULL, variant TEXT NOT NULL,
  splits INTEGER NOT NULL, owner TEXT NOT NULL, strikes INTEGER NOT NULL, started_at REAL NOT NULL,
  PRIMARY KEY (device, build, problem, variant, splits));
"""


@dataclass(frozen=True)
class Claim:
    """What claim() found: "go" (the marker is this process's now), "busy" (a live process is
    checking it: `holder`), or "crashed" (stored as failed: `reason`). `strikes`: earlier checks
    of it that died with their process."""
    state: str
    strikes: int = 0
    holder: str = ""
    reason: str = ""


def drop(conn, key: tuple, owner: str) -> None:
    """Drop the marker of candidate `key` if the lease `owner` holds it (its check ended)."""
    conn.execute(f"DELETE FROM checks_v2 WHERE {CANDIDATE_SQL} AND owner = ?", (*key, owner))


class CheckMarkers:
    """TuningDB's check-marker methods. They use its path, _lock, _lease, _lease_users, _write(),
    _query() and _put_checked()."""

    @contextlib.contextmanager
    def lease(self):
        """This process's lease on the DB while it tunes (re-entrant); yields its token. A marker
        under it reads as in flight while the process lives, and `kgen db reset` refuses."""
        with self._lock:
            if self._lease is None:
                self._lease = lease.Lease(self.path)
            self._lease_users += 1
            token = self._lease.token
        try:
            yield token
        finally:
            with self._lock:
                self._lease_users -= 1
                if self._lease_users == 0:
                    self._lease.release()
                    self._lease = None

    def claim(self, device: DeviceIdentity, build: BuildIdentity, failed: Measurement, owner: str) -> Claim:
        """Mark the candidate of `failed` (its class, variant, splits, shape and kernel) as being
        checked or timed by the lease `owner`, unless a live process is measuring it. A marker
        left by a dead process is a strike; at CRASH_STRIKES the candidate is stored as `failed`
        with crash_reason() instead, in the same transaction."""
        key = (device.key, build.key, failed.problem.key, failed.variant, failed.splits)
        with self._write() as conn:
            row = conn.execute(f"SELECT owner, strikes FROM checks_v2 WHERE {CANDIDATE_SQL}", key).fetchone()
            if row is not None:
                if row["owner"] == owner or lease.alive(self.path, row["owner"]):
                    return Claim("busy", row["strikes"], holder=row["owner"])
                strikes = row["strikes"] + 1
            else:
                stored = conn.execute(f"SELECT reason FROM measurements_v2 WHERE {CANDIDATE_SQL} "
                                      "AND status = 'failed'", key).fetchone()
                if stored is not None and stored["reason"] != LEGACY_CRASH_MARK and is_crash(stored["reason"]):
                    return Claim("crashed", CRASH_STRIKES, reason=stored["reason"])
                strikes = 1 if stored is not None and stored["reason"] == LEGACY_CRASH_MARK else 0
            if strikes >= CRASH_STRIKES:
                conn.execute(f"DELETE FROM checks_v2 WHERE {CANDIDATE_SQL}", key)
                reason = crash_reason(strikes)
                self._put_checked(conn, device, build, "measurements",
                                  dataclasses.replace(failed, status="failed", median_us=None, spread_us=None,
                                                      runs=0, nmse=None, reason=reason))
                return Claim("crashed", strikes, reason=reason)
            conn.execute("INSERT OR REPLACE INTO checks_v2 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (*key, owner, strikes, time.time()))
            return Claim("go", strikes)

    def release(self, owner: str) -> None:
        """Drop every marker of the lease `owner` (its checks ended without a crash)."""
        with self._write() as conn:
            conn.execute("DELETE FROM checks_v2 WHERE owner = ?", (owner,))

    def retry_crashed(self, device: DeviceIdentity, build: BuildIdentity, problem: ProblemClass) -> int:
        """Forget the class's crash verdicts and the strikes of its dead processes' markers, so
        that its candidates are checked again; returns how many candidates that frees."""
        klass = (device.key, build.key, problem.key)
        with self._write() as conn:
            crashed = {(r["variant"], r["splits"]) for r in conn.execute(
                f"SELECT variant, splits, reason FROM measurements_v2 WHERE {KEY_SQL} AND status = 'failed'",
                klass).fetchall() if is_crash(r["reason"])}
            dead = {(r["variant"], r["splits"]) for r in conn.execute(
                f"SELECT variant, splits, owner FROM checks_v2 WHERE {KEY_SQL}", klass).fetchall()
                if not lease.alive(self.path, r["owner"])}
            for candidate in crashed:
                conn.execute(f"DELETE FROM measurements_v2 WHERE {CANDIDATE_SQL}", (*klass, *candidate))
            for candidate in dead:
                conn.execute(f"DELETE FROM checks_v2 WHERE {CANDIDATE_SQL}", (*klass, *candidate))
            return len(crashed | dead)

    def markers(self, device: DeviceIdentity, build: BuildIdentity, problem: ProblemClass) -> list[dict]:
        """The class's check markers: variant, splits, owner, strikes, started_at, alive."""
        rows = self._query(f"SELECT variant, splits, owner, strikes, started_at FROM checks_v2 WHERE {KEY_SQL} "
                           "ORDER BY variant, splits", (device.key, build.key, problem.key))
        return [{**dict(r), "alive": lease.alive(self.path, r["owner"])} for r in rows]
