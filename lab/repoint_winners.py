"""Point a tuning DB's winners at today's kernels (their digests) without timing them again, so
that `kgen bench` runs the same winners after a template edit as before it: a side-by-side check
that the edit changed no speed. Not for a DB you tune with: a winner timed on another kernel
should be timed again (`kgen tune`), which is why the dispatcher skips it.

    .venv/bin/python lab/repoint_winners.py DB.sqlite
"""
import sqlite3
import sys

from kgen.identity import kernel_digest

db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT device, build, problem, variant FROM winners_v2").fetchall()
for device, build, problem, variant in rows:
    db.execute("UPDATE winners_v2 SET kernel = ? WHERE device = ? AND build = ? AND problem = ?",
               (kernel_digest(variant), device, build, problem))
db.commit()
print(f"{len(rows)} winners point at today's kernels")
