"""Who is tuning on a tuning DB right now: one lease file per tuning process, locked (flock) for as
long as the process tunes.

The kernel drops a process's locks when it dies, however it dies (SIGKILL, OOM kill, a driver
crash), so a lease that is not locked belongs to a dead process; and a pid reused by another
process never looks like the old owner, because the lease's token is unique. The files live in
`<db>.tuners/`, named by their token; each holds its pid, host and start time, for messages.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


def lease_dir(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".tuners")


@dataclass(frozen=True)
class Holder:
    token: str
    pid: int
    host: str
    since: float

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on {self.host}, tuning since {started}"


class Lease:
    """This process's lease on the DB at `db_path`; release() (or the process's end) ends it."""

    def __init__(self, db_path: Path):
        directory = lease_dir(db_path)
        directory.mkdir(parents=True, exist_ok=True)
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.path = directory / f"{self.token}.lease"
        # Locked before it gets its name: a reader never sees this lease unlocked while it lives.
        tmp = directory / f".{self.token}.tmp"
        self._fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(self._fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                           "since": time.time()}).encode())
            os.replace(tmp, self.path)
        except BaseException:
            os.close(self._fd)
            tmp.unlink(missing_ok=True)
            raise

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def _locked(path: Path) -> bool | None:
    """True while the lease's process lives, False once it is gone, None if there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)   # also drops the shared lock, if it was taken
    return False


def alive(db_path: Path, token: str) -> bool:
    """Whether the process that took the lease `token` on this DB still runs."""
    return bool(_locked(lease_dir(db_path) / f"{token}.lease"))


def holders(db_path: Path) -> list[Holder]:
    """The live leases on the DB; the files of dead ones are removed on the way."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for path in sorted(lease_dir(db_path).glob("*.lease")):
            state = _locked(path)
            if state is False:
                path.unlink(missing_ok=True)
            elif state:
                try:
                    info = json.loads(path.read_text())
                    found.append(Holder(path.stem, int(info["pid"]), str(info["host"]), float(info["since"])))
                except (OSError, ValueError, KeyError, TypeError):   # caught mid-write: its token says
                    found.append(Holder(path.stem, int(path.stem.split("-")[0]), "?", 0.0))
    return found
