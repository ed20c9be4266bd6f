"""A timing that takes the process down is struck like a check: a candidate's first timing under
its check's marker, each later timing (the near-tie re-timing of an earlier run's measurement,
here) under a marker of its own. The first death leaves a marker, the second stores the candidate
as crashed, and the next run finishes without it instead of dying again forever."""
import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest

from helpers import ROOT
from kgen.identity import BuildIdentity, DeviceIdentity, kernel_digest
from kgen.models import parse_shape
from kgen.profiles import LAVAPIPE
from kgen.runtime import open_device
from kgen.shapes import fold_gqa
from kgen.tools.suites import Case
from kgen.tune import candidates, driver
from kgen.tune.search import CandidateFailed
from kgen.tunedb import Measurement, TuningDB, lease
from kgen.tunedb.records import CRASH_STRIKES, EARLIER_CRASHED, is_crash

SHAPE = "1,2,2,16,256,64,64"   # B, Hq, Hkv, Nq, Nkv, Dk, Dv
RUNS = 3
TUNE = ["tune", "--shape", SHAPE, "--max-evals", "2", "--runs", str(RUNS)]

# `kgen tune` with every timing returning the same samples, so that the winner rule sees a
# near-tie and times the candidates again with more runs. The first timing with more than
# argv[2] runs (0: any timing) of the candidate argv[1] (or of any, where "-") is SIGKILLed: no
# finally, no atexit. Checks run for real.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from kgen.tune.measure import GpuEvaluator
    victim, fewer = sys.argv[1], int(sys.argv[2])
    def time(self, c, runs):
        if runs > fewer and victim in ("-", c.name):
            print("killed at", c.name, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return [100.0] * runs
    GpuEvaluator.time = time
    from kgen.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _tune(db_path, victim: str, fewer: int = RUNS) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILLER, victim, str(fewer), *TUNE], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "KGEN_DB": str(db_path), "COLUMNS": "400"})


def _class():
    caps = open_device(None).caps
    timed = fold_gqa(parse_shape(SHAPE).fitted(caps).shapes())
    return DeviceIdentity.of(caps), BuildIdentity.current(), timed.problem()


def _stored(db, device, build, problem) -> dict[str, Measurement]:
    return {f"{m.variant}@{m.splits}".removesuffix("@1"): m for m in db.measurements(device, build, problem)}


def test_a_retiming_that_kills_the_process_is_struck_then_left_out(tmp_path):
    db_path = tmp_path / "t.sqlite"
    device, build, problem = _class()
    first = _tune(db_path, "-")
    assert first.returncode == -9, first.stderr[-2000:]
    victim = first.stdout.split("killed at ", 1)[1].strip()
    with TuningDB(db_path) as db:
        marked = [(m["variant"], m["strikes"], m["alive"]) for m in db.markers(device, build, problem)]
        assert marked == [(victim.partition("@")[0], 0, False)]
        stored = _stored(db, device, build, problem)
        assert stored[victim].status == "ok" and stored[victim].runs == RUNS   # the check and first timing held
    second = _tune(db_path, victim)   # resumes, and dies re-timing the same candidate
    assert second.returncode == -9 and f"killed at {victim}" in second.stdout, second.stderr[-2000:]
    with TuningDB(db_path) as db:
        assert [m["strikes"] for m in db.markers(device, build, problem)] == [1]
    third = _tune(db_path, victim)
    assert third.returncode == 0 and "killed" not in third.stdout, third.stderr[-2000:]
    with TuningDB(db_path) as db:
        stored = _stored(db, device, build, problem)
        assert stored[victim].status == "failed" and is_crash(stored[victim].reason)
        (other,) = set(stored) - {victim}
        assert stored[other].status == "ok" and stored[other].runs == 3 * RUNS   # its re-timing was stored
        w = db.winner(device, build, problem)
        assert f"{w.variant}@{w.splits}".removesuffix("@1") == other
        assert db.markers(device, build, problem) == []
    assert f"rejected {victim}: failed: " in third.stderr


def test_a_first_timing_that_kills_the_process_is_a_strike_on_its_check(tmp_path):
    db_path = tmp_path / "t.sqlite"
    device, build, problem = _class()
    killed = _tune(db_path, "-", fewer=0)
    assert killed.returncode == -9, killed.stderr[-2000:]
    victim = killed.stdout.split("killed at ", 1)[1].strip()
    with TuningDB(db_path) as db:
        marked = [(m["variant"], m["strikes"]) for m in db.markers(device, build, problem)]
        assert marked == [(victim.partition("@")[0], 0)]
        assert victim not in _stored(db, device, build, problem)   # checked, never timed: nothing stored
    again = _tune(db_path, "none")
    assert again.returncode == 0, again.stderr[-2000:]
    with TuningDB(db_path) as db:
        m = _stored(db, device, build, problem)[victim]
        assert m.status == "ok" and m.runs >= RUNS and db.markers(device, build, problem) == []


# --- the timing markers themselves, without a device -----------------------------------------
DEV = DeviceIdentity(vendor_id=0x10DE, device_id=0x2330, driver_id=14, driver_version=580 << 22,
                     pipeline_cache_uuid="0123456789abcdef0123456789abcdef", name="NVIDIA H100")
BUILD = BuildIdentity(kgen_version="0.1.0", compiler="glslang 15.1.0")
SHAPES = Case("t", heads_kv=2, gqa=1, n_q=16, n_kv=256, head_k=64, head_v=64).shapes()
PROBLEM, DESCRIBED = SHAPES.problem(), driver.describe_shape(SHAPES)
CANDS, _ = candidates(SHAPES, LAVAPIPE)


def _timing(c) -> Measurement:
    return Measurement(PROBLEM, c.variant.uri, c.splits, "ok", median_us=40.0, spread_us=0.0, runs=10,
                       nmse=1e-7, shape=DESCRIBED, kernel=kernel_digest(c.variant.uri))


def _tuner(db, path) -> tuple[lease.Lease, driver._Marks]:
    """Another tuner's lease on the DB and its markers; release the lease to kill it."""
    held = lease.Lease(path)
    return held, driver._Marks(db, DEV, BUILD, PROBLEM, DESCRIBED, held.token)


def test_a_timing_marker_is_struck_when_its_tuner_dies_and_left_to_a_live_one(tmp_path):
    path, c = tmp_path / "t.sqlite", CANDS[1]
    with TuningDB(path) as db:
        db.record(DEV, BUILD, _timing(c))
        live, live_marks = _tuner(db, path)
        live_marks.claim_timing(c)
        me, marks = _tuner(db, path)
        marks.claim_timing(c)   # a live tuner times it too: its marker stays its own
        assert [(m["owner"], m["strikes"]) for m in db.markers(DEV, BUILD, PROBLEM)] == [(live.token, 0)]
        live.release()   # dies mid-timing
        for strikes in range(1, CRASH_STRIKES):
            marks.claim_timing(c)
            assert [(m["owner"], m["strikes"]) for m in db.markers(DEV, BUILD, PROBLEM)] == [(me.token, strikes)]
            me.release()
            me, marks = _tuner(db, path)
        with pytest.raises(CandidateFailed) as verdict:
            marks.claim_timing(c)
        [m] = db.measurements(DEV, BUILD, PROBLEM)
        assert m.status == "failed" and is_crash(m.reason) and m.reason == str(verdict.value)
        assert "--retry-crashed" in m.reason and db.markers(DEV, BUILD, PROBLEM) == []
        assert db.retry_crashed(DEV, BUILD, PROBLEM) == 1 and db.measurements(DEV, BUILD, PROBLEM) == []
        me.release()


def test_an_older_kgens_crash_verdict_is_still_one(tmp_path):
    c = CANDS[2]
    reason = (f"{EARLIER_CRASHED} 2 times (a driver crash, or a kill from outside); "
              "`kgen tune --retry-crashed` checks it again")
    with TuningDB(tmp_path / "t.sqlite") as db, db.lease() as me:
        db.record(DEV, BUILD, dataclasses.replace(_timing(c), status="failed", median_us=None, runs=0,
                                                  nmse=None, reason=reason))
        assert is_crash(reason) and db.claim(DEV, BUILD, _timing(c), me).state == "crashed"
        assert db.retry_crashed(DEV, BUILD, PROBLEM) == 1
