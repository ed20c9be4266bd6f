"""The tuning database: every candidate's measurement and each class's winner, per device and build.

SQLite (WAL, busy timeout, one transaction per write) so that several tuner processes can write
at once and an interrupted tune keeps what it measured. Keys: DeviceIdentity.key,
BuildIdentity.key, ProblemClass.key, and (variant uri, splits) for a candidate.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import KgenError
from .identity import BuildIdentity, DeviceIdentity
from .problem import ProblemClass

SCHEMA_VERSION = 1
STATUSES = ("ok", "wrong", "failed")  # timed; failed the reference check; compile/pipeline/run error


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


class TuningDB:
    """Open with TuningDB(path) (default knobs.db_path()); use as a context manager or close()."""

    def __init__(self, path: Path | None = None):
        raise NotImplementedError("TuningDB")

    def record(self, device: DeviceIdentity, build: BuildIdentity, m: Measurement) -> None:
        """Insert or replace the measurement of (device, build, class, variant, splits)."""
        raise NotImplementedError("TuningDB.record")

    def measurements(self, device: DeviceIdentity, build: BuildIdentity,
                     problem: ProblemClass) -> list[Measurement]:
        raise NotImplementedError("TuningDB.measurements")

    def set_winner(self, device: DeviceIdentity, build: BuildIdentity, w: Winner) -> None:
        raise NotImplementedError("TuningDB.set_winner")

    def winner(self, device: DeviceIdentity, build: BuildIdentity, problem: ProblemClass) -> Winner | None:
        raise NotImplementedError("TuningDB.winner")

    def winners_like(self, device: DeviceIdentity, build: BuildIdentity,
                     problem: ProblemClass) -> list[Winner]:
        """Winners with the same head sizes, KV types, features and acc, any buckets."""
        raise NotImplementedError("TuningDB.winners_like")

    def winners(self, device: DeviceIdentity | None = None,
                build: BuildIdentity | None = None) -> list[tuple[DeviceIdentity, BuildIdentity, Winner]]:
        raise NotImplementedError("TuningDB.winners")

    def export_json(self) -> dict:
        raise NotImplementedError("TuningDB.export_json")

    def import_json(self, data: dict) -> int:
        raise NotImplementedError("TuningDB.import_json")

    def close(self) -> None:
        raise NotImplementedError("TuningDB.close")
