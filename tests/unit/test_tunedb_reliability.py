"""The tuning DB under killed and concurrent tuners, damage and hostile input: check markers with
dead and live owners, the winner rule under interleaved writers, quick_check on open, a reset
during a tune, canonical imports and escaped output. No device needed; every DB under tmp_path."""
import dataclasses
import multiprocessing
import os
import signal
import sqlite3
import time
import warnings

import pytest

from kgen.cli import main
from kgen.errors import CompileError
from kgen.identity import BuildIdentity, DeviceIdentity, kernel_digest
from kgen.profiles import LAVAPIPE
from kgen.tools.suites import Case
from kgen.tune import candidates, driver
from kgen.tunedb import Measurement, TuningDB, TuningDBError, lease, store
from kgen.tunedb.records import CRASH_STRIKES, LEGACY_CRASH_MARK, TRANSIENT

DEV = DeviceIdentity(vendor_id=0x10DE, device_id=0x2330, driver_id=14, driver_version=580 << 22,
                     pipeline_cache_uuid="0123456789abcdef0123456789abcdef", name="NVIDIA H100")
BUILD = BuildIdentity(kgen_version="0.1.0", compiler="glslang 15.1.0")
SHAPES = dataclasses.replace(Case("t", heads_kv=2, gqa=1, n_q=16, n_kv=256, head_k=64, head_v=64).shapes(),
                             mask_shape=(1, 1, 16, 256))
PROBLEM = SHAPES.problem()
SHAPE = driver.describe_shape(SHAPES)
CANDS, DEFAULT = candidates(SHAPES, LAVAPIPE)
RULE = driver.winner_rule(PROBLEM, SHAPE, CANDS, DEFAULT, "random")
FORK = multiprocessing.get_context("fork")


def timing(c, us: float, runs: int = 10) -> Measurement:
    return Measurement(PROBLEM, c.variant.uri, c.splits, "ok", median_us=us, spread_us=0.0, runs=runs,
                       nmse=1e-7, shape=SHAPE, kernel=kernel_digest(c.variant.uri))


def failed(c) -> Measurement:
    return Measurement(PROBLEM, c.variant.uri, c.splits, "failed", shape=SHAPE, kernel=kernel_digest(c.variant.uri))


# --- check markers ------------------------------------------------------------------------------
def _claim_then_wait(path, c, claimed, done):
    db = TuningDB(path)
    with db.lease() as owner:
        assert db.claim(DEV, BUILD, failed(c), owner).state == "go"
        claimed.set()
        done.wait(60)   # alive, checking, until the parent is done looking


def _checker(path, c):
    """A child that starts checking `c` and stays alive; kill it to crash the check."""
    claimed, done = FORK.Event(), FORK.Event()
    child = FORK.Process(target=_claim_then_wait, args=(path, c, claimed, done))
    child.start()
    assert claimed.wait(60)
    return child, done


def _kill(child):
    os.kill(child.pid, signal.SIGKILL)
    child.join(60)
    assert child.exitcode == -signal.SIGKILL


def test_a_live_owners_marker_is_in_flight_and_a_dead_ones_a_strike(tmp_path):
    path, c = tmp_path / "t.sqlite", CANDS[1]
    db = TuningDB(path)
    child, done = _checker(path, c)
    with db.lease() as me:
        busy = db.claim(DEV, BUILD, failed(c), me)
        assert busy.state == "busy" and busy.holder.startswith(f"{child.pid}-")
        assert db.measurement(DEV, BUILD, PROBLEM, c.variant.uri, c.splits) is None   # no fake failure
        _kill(child)   # SIGKILL mid-check: no cleanup ran
        assert [m["alive"] for m in db.markers(DEV, BUILD, PROBLEM)] == [False]
        retry = db.claim(DEV, BUILD, failed(c), me)
        assert (retry.state, retry.strikes) == ("go", 1)   # checked again, not skipped
        db.record(DEV, BUILD, timing(c, 40.0), owner=me)   # the outcome replaces the marker
        assert db.markers(DEV, BUILD, PROBLEM) == []
        assert db.measurement(DEV, BUILD, PROBLEM, c.variant.uri, c.splits).median_us == 40.0


def test_a_candidate_whose_check_dies_twice_is_stored_as_crashing_until_retry(tmp_path):
    path, c = tmp_path / "t.sqlite", CANDS[2]
    db = TuningDB(path)
    for _ in range(CRASH_STRIKES):
        child, _ = _checker(path, c)
        _kill(child)
    with db.lease() as me:
        verdict = db.claim(DEV, BUILD, failed(c), me)
        assert verdict.state == "crashed" and "--retry-crashed" in verdict.reason
        [m] = db.measurements(DEV, BUILD, PROBLEM)
        assert m.status == "failed" and m.reason == verdict.reason and db.markers(DEV, BUILD, PROBLEM) == []
        assert db.claim(DEV, BUILD, failed(c), me).state == "crashed"   # it stays a verdict
        assert db.retry_crashed(DEV, BUILD, PROBLEM) == 1
        assert db.measurements(DEV, BUILD, PROBLEM) == []
        assert db.claim(DEV, BUILD, failed(c), me) == store.Claim("go", 0)
        db.release(me)
        assert db.markers(DEV, BUILD, PROBLEM) == []


def test_an_older_kgens_crash_marker_is_one_strike(tmp_path):
    c = CANDS[3]
    with TuningDB(tmp_path / "t.sqlite") as db, db.lease() as me:
        db.record(DEV, BUILD, dataclasses.replace(failed(c), reason=LEGACY_CRASH_MARK))
        known = driver._known(db, DEV, BUILD, PROBLEM, SHAPE)
        assert c.name not in known   # checked again, not skipped forever
        assert db.claim(DEV, BUILD, failed(c), me) == store.Claim("go", 1)


def test_a_compiler_killed_by_a_signal_is_retried_by_the_next_tune(tmp_path):
    c, real = CANDS[4], CANDS[5]
    killed = driver._compile_failure(c, CompileError(c.variant.uri, "glslang was killed by SIGSEGV (signal 11)\n"))
    status = CompileError(c.variant.uri, "")
    status.returncode = -9
    for error in (status, CompileError(c.variant.uri, ""),
                  CompileError(c.variant.uri, "spirv-val rejected the module (was killed by SIGKILL (signal 9)):\n")):
        assert driver._compile_failure(c, error).reason.startswith(TRANSIENT)
    error = driver._compile_failure(real, CompileError(real.variant.uri, "glslang exited with status 2\n"
                                                       "ERROR: 0:12: 'x' : undeclared (was killed by SIGSEGV)"))
    timeout = CompileError(real.variant.uri, "glslang timed out after 60 s and was killed; a compiler that hangs")
    assert killed.reason.startswith(TRANSIENT) and not error.reason.startswith(TRANSIENT)
    assert not driver._compile_failure(real, timeout).reason.startswith(TRANSIENT)
    with TuningDB(tmp_path / "t.sqlite") as db:
        for o in (killed, error):
            db.record(DEV, BUILD, driver._measurement(PROBLEM, SHAPE, o))
        assert set(driver._known(db, DEV, BUILD, PROBLEM, SHAPE)) == {real.name}


# --- the winner rule: all measurements of the class, whoever writes last ------------------------
WRITERS = 4


def _tuner(path, worker, barrier, costs):
    """Measures its share of the candidates in its own order, then decides, as a tune does."""
    db = TuningDB(path)
    barrier.wait()
    mine = [c for i, c in enumerate(CANDS[:24]) if i % WRITERS == worker]
    for c in mine[::-1] if worker % 2 else mine:
        db.record(DEV, BUILD, timing(c, costs[c.name]), rule=RULE)
        time.sleep(0.002 * worker)
    db.decide(DEV, BUILD, PROBLEM, RULE)
    db.close()


def test_concurrent_tuners_store_the_best_of_all_measurements(tmp_path):
    path = tmp_path / "t.sqlite"
    costs = {c.name: 500.0 + 7 * i for i, c in enumerate(CANDS[:24])}
    best = CANDS[5]          # worker 1's, and worker 3 (slowest, last to decide) sees only slower
    costs[best.name] = 100.0
    barrier = FORK.Barrier(WRITERS)
    procs = [FORK.Process(target=_tuner, args=(path, w, barrier, costs)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    with TuningDB(path) as db:
        w = db.winner(DEV, BUILD, PROBLEM)
        assert (w.variant, w.splits, w.median_us) == (best.variant.uri, best.splits, 100.0)
        assert w.candidates == 24 and w == RULE(db.measurements(DEV, BUILD, PROBLEM))


def test_a_measurement_stored_after_the_decision_moves_the_winner(tmp_path):
    """A tuner killed before it decides still counts: its measurement decides again on record."""
    with TuningDB(tmp_path / "t.sqlite") as db:
        for i, c in enumerate(CANDS[1:4]):
            db.record(DEV, BUILD, timing(c, 300.0 + i), rule=RULE)
        assert db.decide(DEV, BUILD, PROBLEM, RULE).variant == CANDS[1].variant.uri
        db.record(DEV, BUILD, timing(CANDS[7], 150.0), rule=RULE)   # its tuner never decides
        assert db.winner(DEV, BUILD, PROBLEM).variant == CANDS[7].variant.uri
        db.record(DEV, BUILD, dataclasses.replace(failed(CANDS[7]), reason="VulkanError: device lost"),
                  rule=RULE)   # re-timed and failed: no longer the winner
        assert db.winner(DEV, BUILD, PROBLEM).variant == CANDS[1].variant.uri


def test_ties_go_to_the_default_then_to_enumeration_order(tmp_path):
    early, late = CANDS[1], CANDS[13]   # in enumeration order; by name (the DB's order) the other way
    assert early.name > late.name
    with TuningDB(tmp_path / "t.sqlite") as db:
        for c, us in ((late, 199.0), (early, 200.0), (DEFAULT, 201.0)):
            db.record(DEV, BUILD, dataclasses.replace(timing(c, us), spread_us=20.0))
        assert db.decide(DEV, BUILD, PROBLEM, RULE).variant == DEFAULT.variant.uri
    with TuningDB(tmp_path / "u.sqlite") as db:
        for c, us in ((late, 199.0), (early, 200.0)):
            db.record(DEV, BUILD, dataclasses.replace(timing(c, us), spread_us=20.0))
        assert db.decide(DEV, BUILD, PROBLEM, RULE).variant == early.variant.uri


# --- damage, reset during a tune ---------------------------------------------------------------------
def _damaged_copy(tmp_path):
    """A DB whose measurements span many pages, one leaf of them wrecked: the winners still read."""
    path = tmp_path / "damaged.sqlite"
    with TuningDB(path) as db:
        for i, c in enumerate(CANDS):
            db.record(DEV, BUILD, dataclasses.replace(timing(c, 100.0 + i), reason="r" * 300))
        db.decide(DEV, BUILD, PROBLEM, RULE)
    conn = sqlite3.connect(path)
    leaf = conn.execute("SELECT pageno FROM dbstat WHERE name = 'measurements_v2' AND pagetype = 'leaf' "
                        "ORDER BY pageno LIMIT 1 OFFSET 2").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    data[(leaf - 1) * size + 8:leaf * size] = b"\xa5" * (size - 8)
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_db_warns_once_on_open_naming_the_file_and_the_fix(tmp_path, monkeypatch):
    path = _damaged_copy(tmp_path)
    monkeypatch.setattr(store, "_warned_damage", set())
    with pytest.warns(UserWarning, match="kgen db reset") as said:
        db = TuningDB(path)
    assert str(path) in str(said[0].message)
    assert db.winner(DEV, BUILD, PROBLEM).variant == DEFAULT.variant.uri   # what reads is still used
    db.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TuningDB(path).close()   # once per file
        TuningDB(tmp_path / "fine.sqlite").close()


def _hold(path, held, done):
    db = TuningDB(path)
    with db.lease():
        held.set()
        done.wait(60)


def test_reset_refuses_while_a_tune_holds_the_db_naming_its_pid(tmp_path, monkeypatch, capsys):
    path = tmp_path / "t.sqlite"
    TuningDB(path).close()
    held, done = FORK.Event(), FORK.Event()
    child = FORK.Process(target=_hold, args=(path, held, done))
    child.start()
    assert held.wait(60)
    with pytest.raises(TuningDBError, match=f"pid {child.pid} on "):
        TuningDB.reset(path)
    monkeypatch.setenv("KGEN_DB", str(path))
    assert main(["db", "reset"]) == 2
    assert f"pid {child.pid}" in capsys.readouterr().err and path.exists()
    assert not list(tmp_path.glob("*.corrupt-*"))
    _kill(child)   # a dead tune's lease holds nothing
    assert TuningDB.reset(path) is not None


def test_a_writer_notices_its_file_was_moved_aside(tmp_path, monkeypatch):
    path = tmp_path / "t.sqlite"
    writer = TuningDB(path)
    writer.record(DEV, BUILD, timing(CANDS[1], 10.0))
    os.replace(path, tmp_path / "aside.sqlite")   # as a reset by another process does
    TuningDB(path).close()
    with pytest.raises(TuningDBError, match="moved aside"):
        writer.record(DEV, BUILD, timing(CANDS[2], 10.0))
    writer.close()
    monkeypatch.setattr(store, "_DEFAULT", {})
    shared = store.open_default(path)
    os.replace(path, tmp_path / "aside2.sqlite")
    TuningDB(path).close()
    assert store.open_default(path) is not shared   # a reader reopens the new file
    store.open_default(path).record(DEV, BUILD, timing(CANDS[2], 10.0))
    assert lease.holders(path) == []


# --- hostile imports and output -------------------------------------------------------------------------
def _export(tmp_path):
    with TuningDB(tmp_path / "src.sqlite") as db:
        db.record(DEV, BUILD, timing(CANDS[1], 10.0))
        db.record(DEV, BUILD, timing(CANDS[2], 12.0))
        db.decide(DEV, BUILD, PROBLEM, RULE)
        return db.export_json()


def _respell(field, old, new):
    def mutate(data):
        rec = data["winners" if field == "runner_up" else "measurements"][0]
        assert old in rec[field]
        rec[field] = rec[field].replace(old, new, 1)
    return mutate


HOSTILE = {
    "leading zero": (_respell("variant", "k64", "k064"), "measurements[0].variant", "not canonical"),
    "arabic digits": (_respell("variant", "k64", "k\u0666\u0664"), "measurements[0].variant", "not canonical"),
    "fullwidth digit": (_respell("variant", "_bc", "_b\uff43"), "measurements[0].variant", ""),
    "runner-up uri": (_respell("runner_up", "k64", "k064"), "winners[0].runner_up", "not canonical"),
    "runner-up splits": (lambda d: d["winners"][0].update(runner_up=d["winners"][0]["runner_up"] + "@\u0664"),
                         "winners[0].runner_up", "ASCII digits"),
    "runner-up zero splits": (lambda d: d["winners"][0].update(runner_up=d["winners"][0]["runner_up"] + "@01"),
                              "winners[0].runner_up", "leading zeros"),
    "ansi name": (lambda d: d["devices"][0].update(name="H100\x1b[2J\x1b[31m"), "devices[0].name", "control"),
    "newline name": (lambda d: d["devices"][0].update(name="H100\nfake row"), "devices[0].name", "control"),
    "nul compiler": (lambda d: d["builds"][0].update(compiler="glslang\x00"), "builds[0].compiler", "control"),
    "bidi name": (lambda d: d["devices"][0].update(name="H100\u202efake"), "devices[0].name", "control"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_non_canonical_or_control_characters_are_refused_naming_the_row(tmp_path, case):
    mutate, where, why = HOSTILE[case]
    data = _export(tmp_path)
    mutate(data)
    with TuningDB(tmp_path / "dst.sqlite") as dst:
        with pytest.raises(TuningDBError) as err:
            dst.import_json(data)
        assert where in str(err.value) and why in str(err.value)
        assert dst.export_json()["measurements"] == []


def test_db_show_escapes_what_it_prints(tmp_path, monkeypatch, capsys):
    path = tmp_path / "t.sqlite"
    evil = dataclasses.replace(DEV, name="H100\x1b]0;owned\x07\x1b[31m\nfake\x00\u202e")
    with TuningDB(path) as db:   # a name straight from a (hostile) driver, never imported
        db.record(evil, BUILD, timing(CANDS[1], 10.0))
        db.decide(evil, BUILD, PROBLEM, RULE)
    monkeypatch.setenv("KGEN_DB", str(path))
    assert main(["db", "show"]) == 0
    out = capsys.readouterr().out
    assert not any(ch in out for ch in "\x1b\x07\x00\u202e") and len(out.splitlines()) == 2
    assert "H100\\x1b]0;owned\\x07\\x1b[31m\\nfake\\x00\\u202e" in out
