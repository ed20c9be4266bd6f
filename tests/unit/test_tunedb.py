"""The tuning DB: round trips, resume, concurrent writers, corrupt files, hostile imports, `kgen db`.
No device needed; every DB lives under tmp_path."""
import copy
import dataclasses
import json
import multiprocessing
import os
import signal
import sqlite3

import numpy as np
import pytest

from kgen import tunedb
from kgen.cli import main
from kgen.identity import BuildIdentity, DeviceIdentity
from kgen.problem import ProblemClass
from kgen.tunedb import MAX_TEXT, Measurement, TuningDB, TuningDBError, Winner, store

DEV = DeviceIdentity(vendor_id=0x10DE, device_id=0x2330, driver_id=14, driver_version=580 << 22,
                     pipeline_cache_uuid="0123456789abcdef0123456789abcdef", name="NVIDIA H100")
DEV2 = DeviceIdentity(vendor_id=0x10005, device_id=0, driver_id=13, driver_version=1,
                      pipeline_cache_uuid="ff" * 16, name="llvmpipe")
BUILD = BuildIdentity(kgen_version="0.1.0", compiler="glslang 15.1.0")
MASK = ProblemClass(head_k=64, head_v=64, features=("mask",))
SC = "fa_sc_k64_v64_f16f16_acc32_br8_bc32_wg128_sg32_ds8_rs1_stage_mask"
CM2 = "fa_cm2_k64_v64_f16f16_acc32_br64_bc64_wg128_sg32_mask"
SPLIT = "fa_sc_k64_v64_f16f16_acc32_br1_bc64_wg32_sg8_ds8_rs1_mask_splitk"


def cls(**kw) -> ProblemClass:
    return ProblemClass(**{"head_k": 64, "head_v": 64, "features": ("mask",), **kw})


def ok(problem=MASK, variant=SC, splits=1, us=10.0) -> Measurement:
    return Measurement(problem, variant, splits, "ok", median_us=us, spread_us=0.5, runs=20,
                       nmse=1e-7, shape="B1 Hq8 Hkv8 Nq512 Nkv4096")


def win(problem=MASK, variant=CM2, splits=1, us=8.0) -> Winner:
    return Winner(problem, variant, splits, us, 0.25, runner_up=f"{SPLIT}@4", runner_up_us=9.5,
                  candidates=3, strategy="exhaustive")


def filled(path) -> TuningDB:
    db = TuningDB(path)
    db.record(DEV, BUILD, ok())
    db.record(DEV, BUILD, ok(variant=SPLIT, splits=4, us=9.5))
    db.record(DEV, BUILD, Measurement(MASK, CM2, 1, "failed", reason="compile error: 'x' undeclared"))
    db.record(DEV2, BUILD, Measurement(MASK, SC, 1, "wrong", nmse=0.5, reason="nmse 0.5 > 1e-3"))
    db.set_winner(DEV, BUILD, win())
    db.set_winner(DEV, BUILD, win(problem=cls(nq_bucket=0), variant=SPLIT, splits=8, us=3.0))
    return db


# --- round trip and resume --------------------------------------------------------------------
def test_record_and_winner_round_trip(tmp_path):
    path = tmp_path / "deep" / "dir" / "t.sqlite"
    with filled(path) as db:
        got = db.measurements(DEV, BUILD, MASK)
        assert {(m.variant, m.splits, m.status) for m in got} == {(SC, 1, "ok"), (SPLIT, 4, "ok"),
                                                                 (CM2, 1, "failed")}
        assert ok() in got
        assert db.measurements(DEV2, BUILD, MASK)[0].status == "wrong"
        assert db.measurements(DEV, BUILD, cls(nq_bucket=0)) == []
        assert db.winner(DEV, BUILD, MASK) == win()
        assert db.winner(DEV2, BUILD, MASK) is None
        other_build = BuildIdentity(kgen_version="0.2.0", compiler="glslang 15.1.0")
        assert db.winner(DEV, other_build, MASK) is None
    with TuningDB(path) as db:   # survives reopening
        assert db.winner(DEV, BUILD, MASK) == win()
        assert [(d, w.problem) for d, _, w in db.winners()] == [(DEV, cls(nq_bucket=0)), (DEV, MASK)]
        assert db.winners(device=DEV2) == []


def test_winners_like_matches_class_but_not_buckets(tmp_path):
    with TuningDB(tmp_path / "t.sqlite") as db:
        for nq in range(4):
            db.set_winner(DEV, BUILD, win(problem=cls(nq_bucket=nq, gqa_bucket=nq)))
        db.set_winner(DEV, BUILD, Winner(cls(features=()), "fa_cm2_k64_v64_f16f16_acc32_br64_bc64_wg128_sg32",
                                         1, 5.0, 0.1))
        db.set_winner(DEV2, BUILD, win())
        like = db.winners_like(DEV, BUILD, cls(nq_bucket=4, nkv_bucket=0))
        assert [w.problem.nq_bucket for w in like] == [0, 1, 2, 3]
        assert all(w.problem.features == ("mask",) for w in like)
        assert db.winners_like(DEV, BUILD, cls(features=("mask", "causal"))) == []


def test_rerecord_replaces_and_numpy_numbers_are_stored(tmp_path):
    with TuningDB(tmp_path / "t.sqlite") as db:
        db.record(DEV, BUILD, Measurement(MASK, SC, 1, "failed", reason="device lost"))
        db.record(DEV, BUILD, Measurement(MASK, SC, 1, "ok", median_us=np.float32(7.5),
                                          spread_us=np.float64(0.5), runs=np.int64(12)))
        [m] = db.measurements(DEV, BUILD, MASK)
        assert (m.status, m.median_us, m.runs, m.reason) == ("ok", 7.5, 12, "")
        assert type(m.runs) is int
        db.set_winner(DEV, BUILD, win(us=8.0))
        db.set_winner(DEV, BUILD, win(variant=SC, us=6.0))
        assert db.winner(DEV, BUILD, MASK).variant == SC and len(db.winners()) == 1


def test_record_rejects_inconsistent_rows_and_cuts_long_reasons(tmp_path):
    with TuningDB(tmp_path / "t.sqlite") as db:
        bad = [ok(variant=SPLIT, splits=1), ok(splits=2), ok(variant=SC.replace("k64", "k128")),
               Measurement(MASK, SC, 1, "ok"), Measurement(MASK, SC, 1, "slow", median_us=1.0),
               ok(us=float("nan")), ok(problem=cls(features=()))]
        for m in bad:
            with pytest.raises(TuningDBError):
                db.record(DEV, BUILD, m)
        assert db.export_json()["measurements"] == []
        db.record(DEV, BUILD, Measurement(MASK, SC, 1, "failed", reason="x" * (3 * MAX_TEXT)))
        assert db.measurements(DEV, BUILD, MASK)[0].reason == "x" * MAX_TEXT


def _record_then_die(path):
    db = TuningDB(path)
    for splits in range(2, 12):
        db.record(DEV, BUILD, ok(variant=SPLIT, splits=splits))
    os.kill(os.getpid(), signal.SIGKILL)   # no close, no atexit: as hard as an interrupt gets


def test_a_killed_tuner_keeps_what_it_recorded(tmp_path):
    path = tmp_path / "t.sqlite"
    child = multiprocessing.get_context("fork").Process(target=_record_then_die, args=(path,))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    with TuningDB(path) as db:
        assert sorted(m.splits for m in db.measurements(DEV, BUILD, MASK)) == list(range(2, 12))


# --- several writers at once --------------------------------------------------------------------
WORKERS, PER_WORKER = 5, 50


def _writer(path, worker, barrier):
    barrier.wait()   # every process opens the (not yet existing) file at the same moment
    db = TuningDB(path)
    for j in range(PER_WORKER):
        problem = cls(nq_bucket=j % 5, nkv_bucket=(j // 5) % 5, gqa_bucket=worker)
        db.record(DEV, BUILD, ok(problem=problem, variant=SPLIT, splits=2 + j // 25, us=float(j)))
        db.set_winner(DEV, BUILD, win(problem=problem, us=float(worker)))
        db.winners_like(DEV, BUILD, problem)   # readers interleave with the writers
    db.close()


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "t.sqlite"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=_writer, args=(path, w, barrier)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WORKERS   # a "database is locked" would exit 1
    with TuningDB(path) as db:
        data = db.export_json()
    assert len(data["measurements"]) == WORKERS * PER_WORKER
    assert len(data["winners"]) == WORKERS * 25
    assert {w["median_us"] for w in data["winners"]} == set(map(float, range(WORKERS)))
    assert len(data["devices"]) == len(data["builds"]) == 1


def test_open_default_caches_per_process(tmp_path, monkeypatch):
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "d.sqlite"))
    monkeypatch.setattr(store, "_DEFAULT", {})
    first = tunedb.open_default()
    assert tunedb.open_default() is first and first.path == tmp_path / "d.sqlite"
    monkeypatch.setattr(store, "_DEFAULT_PID", -1)   # as if this were a forked child
    assert tunedb.open_default() is not first
    first.close()


# --- corrupt files ------------------------------------------------------------------------------
def _junk(path):
    path.write_bytes(b"\x00garbage, not SQLite\xff" * 500)


def _foreign(path):
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE winners (anything TEXT)")
    conn.close()


def _malformed(path):
    filled(path).close()
    data = bytearray(path.read_bytes())
    data[100:] = b"\xa5" * (len(data) - 100)   # keep the header, wreck every page
    path.write_bytes(bytes(data))


def _no_version(path):
    TuningDB(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM meta")
    conn.close()


@pytest.mark.parametrize("damage", [_junk, _foreign, _malformed, _no_version])
def test_corrupt_db_names_the_file_and_reset_recovers(tmp_path, damage):
    path = tmp_path / "t.sqlite"
    damage(path)
    before = path.read_bytes()
    with pytest.raises(TuningDBError) as err:
        with TuningDB(path) as db:   # a wrecked page may only show on the first real query
            db.winner(DEV, BUILD, MASK)
            db.export_json()
    assert str(path) in str(err.value) and "kgen db reset" in str(err.value)
    aside = TuningDB.reset(path)
    assert aside.name.startswith("t.sqlite.corrupt-") and aside.read_bytes() == before
    with TuningDB(path) as db:
        assert db.winners() == [] and db.export_json()["measurements"] == []
        db.record(DEV, BUILD, ok())


def test_reset_moves_the_wal_with_the_file(tmp_path):
    # A WAL left beside the new file would be replayed into it: it goes aside with its database.
    path = tmp_path / "t.sqlite"
    _junk(path)
    path.with_name("t.sqlite-wal").write_bytes(b"old wal")
    aside = TuningDB.reset(path)
    assert aside.with_name(aside.name + "-wal").read_bytes() == b"old wal"
    with TuningDB(path) as fresh:
        assert fresh.winners() == []
    assert not path.with_name("t.sqlite-wal").exists()   # the fresh DB's own WAL is gone on close
    assert TuningDB.reset(tmp_path / "missing.sqlite") is None
    assert TuningDB.reset(path).name != aside.name        # a second reset in the same second


# --- export / import ----------------------------------------------------------------------------
def test_export_import_round_trips(tmp_path):
    with filled(tmp_path / "a.sqlite") as a:
        data = a.export_json()
    assert data["format"] == "kgen-tuning-db" and data["schema"] == tunedb.SCHEMA_VERSION
    assert len(data["measurements"]) == 4 and len(data["winners"]) == 2
    json.loads(json.dumps(data, allow_nan=False))   # plain JSON, no NaN
    with TuningDB(tmp_path / "b.sqlite") as b:
        assert b.import_json(copy.deepcopy(data)) == 2 + 1 + 4 + 2
        assert b.export_json() == data
        assert b.winner(DEV, BUILD, MASK) == win()
        assert b.import_json(data) == 9 and b.export_json() == data   # merging again changes nothing


def _set(table, index, field, value):
    def mutate(data):
        data[table][index][field] = value
    return mutate


def _drop(table, index, field):
    def mutate(data):
        del data[table][index][field]
    return mutate


HOSTILE = {
    "nan": (_set("measurements", -1, "median_us", float("nan")), "median_us"),
    "inf": (_set("measurements", -1, "spread_us", float("inf")), "spread_us"),
    "negative time": (_set("winners", -1, "median_us", -1.0), "winners[1].median_us"),
    "huge string": (_set("measurements", -1, "reason", "A" * (MAX_TEXT + 1)), "reason"),
    "nested junk": (_set("measurements", -1, "variant", {"a": [[[1]]] * 3}), "variant"),
    "bool as int": (_set("measurements", -1, "runs", True), "runs"),
    "float as int": (_set("winners", -1, "splits", 8.0), "splits"),
    "huge int": (_set("measurements", -1, "runs", 2**70), "runs"),
    "string time": (_set("winners", -1, "median_us", "1"), "median_us"),
    "sql problem": (_set("measurements", -1, "problem", "x'); DROP TABLE winners; --"), "problem"),
    "long junk variant": (_set("measurements", -1, "variant", "fa_" + "9" * 4000), "variant"),
    "long junk problem": (_set("winners", -1, "problem", "64/64 " * 600), "problem"),
    "sql variant": (_set("winners", -1, "variant", "fa'; DELETE FROM measurements; --"), "variant"),
    "unknown field": (_set("measurements", -1, "extra", 1), "unknown field"),
    "missing field": (_drop("winners", -1, "strategy"), "missing field"),
    "bad status": (_set("measurements", -1, "status", "great"), "status"),
    "time on failure": (_set("measurements", -1, "median_us", 1.0), "median_us"),
    "splitk at 1 split": (_set("winners", 0, "splits", 1), "splits=1"),
    "splits 0": (_set("measurements", -1, "splits", 0), "splits=0"),
    "wrong head size": (_set("winners", 0, "variant", SPLIT.replace("k64", "k128")), "head_k"),
    "wrong features": (_set("winners", 0, "variant", CM2.removesuffix("_mask")), "features"),
    "bad runner-up": (_set("winners", 0, "runner_up", SC + "@0"), "runner_up"),
    "runner-up time alone": (_set("winners", 0, "runner_up", None), "runner_up_us"),
    "forged device key": (_set("devices", 0, "vendor_id", 1), "devices[0].key"),
    "unknown device": (_set("measurements", -1, "device", "0" * 16), "not in devices"),
    "unknown build": (_set("winners", -1, "build", "1" * 16), "not in builds"),
    "duplicate": (lambda d: d["measurements"].append(dict(d["measurements"][0])), "second record"),
    "record not object": (lambda d: d["winners"].append([1, 2]), "winners[2]"),
    "devices not list": (lambda d: d.update(devices={"a": 1}), "devices"),
    "format": (lambda d: d.update(format="other"), "format"),
    "newer schema": (lambda d: d.update(schema=3), "schema 3 is a newer kgen's export"),
    "older schema": (lambda d: d.update(schema=1), "schema 1 is an older kgen's export"),
    "schema bool": (lambda d: d.update(schema=True), "schema"),
    "extra top": (lambda d: d.update(more=[]), "exactly the fields"),
    "not a dict": (lambda d: d.clear() or d.update(format=[d]), "exactly the fields"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_import_is_rejected_and_writes_nothing(tmp_path, case):
    mutate, where = HOSTILE[case]
    with filled(tmp_path / "src.sqlite") as src:
        data = src.export_json()
    mutate(data)
    with TuningDB(tmp_path / "dst.sqlite") as dst:
        dst.record(DEV2, BUILD, ok(variant=CM2, us=4.0))   # a DB with something in it already
        before = dst.export_json()
        with pytest.raises(TuningDBError) as err:
            dst.import_json(data)
        assert where in str(err.value)
        assert len(str(err.value)) < 600   # a hostile value is quoted short, never whole
        assert dst.export_json() == before


def test_import_accepts_references_already_in_the_db(tmp_path):
    with filled(tmp_path / "src.sqlite") as src:
        data = src.export_json()
    with TuningDB(tmp_path / "dst.sqlite") as dst:
        dst.record(DEV, BUILD, ok())
        only_records = {**data, "devices": [], "builds": [],
                        "measurements": [m for m in data["measurements"] if m["device"] == DEV.key]}
        assert dst.import_json(only_records) == 3 + 2
        assert len(dst.measurements(DEV, BUILD, MASK)) == 3


# --- other schemas: their tables and exports go unused (`kgen tune` times again) ---------------------
# Schema 1 as it was written (builds keyed with a hash of every template file, no kernel digests),
# and schema 2 before its tables carried the version in their names: frozen copies.
_OLD_CLASS_SQL = ("head_k INTEGER NOT NULL, head_v INTEGER NOT NULL, k_type TEXT NOT NULL, "
                  "v_type TEXT NOT NULL, features TEXT NOT NULL, acc INTEGER NOT NULL, "
                  "nq_bucket INTEGER NOT NULL, nkv_bucket INTEGER NOT NULL, gqa_bucket INTEGER NOT NULL")
OLD_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE devices (key TEXT PRIMARY KEY, name TEXT NOT NULL, identity TEXT NOT NULL);
CREATE TABLE builds (key TEXT PRIMARY KEY, identity TEXT NOT NULL);
CREATE TABLE measurements (
  device_key TEXT NOT NULL, build_key TEXT NOT NULL, problem TEXT NOT NULL, {_OLD_CLASS_SQL},
  variant TEXT NOT NULL, splits INTEGER NOT NULL, status TEXT NOT NULL, median_us REAL, spread_us REAL,
  runs INTEGER NOT NULL, nmse REAL, reason TEXT NOT NULL, shape TEXT NOT NULL, kernel TEXT NOT NULL,
  created_at REAL NOT NULL, UNIQUE (device_key, build_key, problem, variant, splits));
CREATE TABLE winners (
  device_key TEXT NOT NULL, build_key TEXT NOT NULL, problem TEXT NOT NULL, {_OLD_CLASS_SQL},
  variant TEXT NOT NULL, splits INTEGER NOT NULL, median_us REAL NOT NULL, spread_us REAL NOT NULL,
  runner_up TEXT, runner_up_us REAL, candidates INTEGER NOT NULL, strategy TEXT NOT NULL,
  kernel TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (device_key, build_key, problem));
CREATE INDEX winners_like ON winners (device_key, build_key, head_k, head_v, k_type, v_type, features, acc);
"""
OLD_TABLES = ("meta", "devices", "builds", "measurements", "winners")


def _as_v1(data: dict) -> dict:
    """A current export as schema 1 wrote it: each build with a template hash (and so another
    key), the records without kernel digests."""
    from kgen.identity import _digest
    out = {**data, "schema": 1, "builds": []}
    keys = {}
    for b in data["builds"]:
        fields = {"kgen_version": b["kgen_version"], "template_hash": "t" * 16, "compiler": b["compiler"]}
        out["builds"].append({"key": _digest(fields), **fields})
        keys[b["key"]] = _digest(fields)
    for table in ("measurements", "winners"):
        out[table] = [{**{k: v for k, v in rec.items() if k != "kernel"}, "build": keys[rec["build"]]}
                      for rec in data[table]]
    return out


def _old_file(path, schema: int) -> dict[str, list]:
    """A DB file with filled()'s rows in the tables of `schema` 1 or 2 (unversioned names; for 2
    today's keys, so a reader of those tables would find them); returns every table's rows."""
    with filled(path.with_name("src.sqlite")) as src:
        data = src.export_json()
    if schema == 1:
        data = _as_v1(data)
    conn = sqlite3.connect(path)
    script = OLD_SCHEMA if schema == 2 else OLD_SCHEMA.replace(" kernel TEXT NOT NULL,", "")
    conn.executescript(script)
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(schema),))
    for d in data["devices"]:
        conn.execute("INSERT INTO devices VALUES (?, ?, ?)",
                     (d["key"], d["name"], json.dumps({k: v for k, v in d.items() if k != "key"})))
    for b in data["builds"]:
        conn.execute("INSERT INTO builds VALUES (?, ?)", (b["key"], json.dumps({k: v for k, v in b.items() if k != "key"})))
    for table in ("measurements", "winners"):
        for rec in data[table]:
            problem = ProblemClass.parse(rec["problem"])
            cols = {"device_key": rec["device"], "build_key": rec["build"],
                    **dict(zip(store._CLASS_COLUMNS, store._class_values(problem))),
                    **{k: v for k, v in rec.items() if k not in ("device", "build")}}
            conn.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                         list(cols.values()))
    conn.commit()
    conn.close()
    return _rows(path)


def _rows(path) -> dict[str, list]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in OLD_TABLES}
    finally:
        conn.close()


def test_tables_are_named_by_their_schema():
    assert {t for t in store._expected_columns() if t != "meta"} == \
        {f"{t}_v{tunedb.SCHEMA_VERSION}" for t in ("devices", "builds", "measurements", "winners", "checks")}


@pytest.mark.parametrize("schema", [1, 2])
def test_old_tables_get_the_current_ones_beside_them_and_go_unused(tmp_path, monkeypatch, capsys, schema):
    path = tmp_path / "old.sqlite"
    before = _old_file(path, schema)
    assert len(before["winners"]) == 2 and len(before["measurements"]) == 4
    with TuningDB(path) as db:
        assert db.winners() == [] and db.winner(DEV, BUILD, MASK) is None
        assert db.measurements(DEV, BUILD, MASK) == [] and db.winners_like(DEV, BUILD, MASK) == []
        data = db.export_json()
        assert all(data[t] == [] for t in ("devices", "builds", "measurements", "winners"))
        db.set_winner(DEV, BUILD, win())   # the current tables take new rows
    monkeypatch.setenv("KGEN_DB", str(path))
    assert main(["db", "show"]) == 0
    assert capsys.readouterr().out.count(MASK.key) == 1   # the new winner only
    tables = store._columns(sqlite3.connect(path))
    assert set(store._expected_columns()) <= set(tables) and set(OLD_TABLES) <= set(tables)
    assert _rows(path) == before   # the old rows, meta's version included, as they were
    with TuningDB(path) as db:     # and it opens again as it is
        assert [w for _, _, w in db.winners()] == [win()]


def test_a_newer_schemas_tables_leave_this_schemas_alone(tmp_path):
    path = tmp_path / "t.sqlite"
    filled(path).close()
    with sqlite3.connect(path) as conn:   # as a newer kgen would leave it: its tables beside ours
        conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
        conn.execute("CREATE TABLE winners_v7 (anything TEXT)")
        conn.execute("INSERT INTO winners_v7 VALUES ('theirs')")
    conn.close()
    with TuningDB(path) as db:
        assert db.winner(DEV, BUILD, MASK) == win() and len(db.winners()) == 2
        db.record(DEV, BUILD, ok(us=1.0))
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT * FROM winners_v7").fetchall() == [("theirs",)]
    conn.close()


def test_an_older_schemas_export_is_refused_naming_its_version(tmp_path, monkeypatch, capsys):
    with filled(tmp_path / "src.sqlite") as src:
        v1 = _as_v1(src.export_json())
    path = tmp_path / "dst.sqlite"
    with TuningDB(path) as dst:
        dst.record(DEV2, BUILD, ok(variant=CM2, us=4.0))
        before = dst.export_json()
        with pytest.raises(TuningDBError, match=r"import\.schema: 'kgen-tuning-db' schema 1 is an older "
                                                r"kgen's export.*`kgen tune` times those classes again"):
            dst.import_json(v1)
        assert dst.export_json() == before
    v1_file = tmp_path / "v1.json"
    v1_file.write_text(json.dumps(v1))
    monkeypatch.setenv("KGEN_DB", str(path))
    assert main(["db", "import", str(v1_file)]) == 2
    assert "schema 1" in capsys.readouterr().err
    with TuningDB(path) as dst:
        assert dst.export_json() == before


def test_the_filed_h100_export_imports(tmp_path):
    """The H100 tuning DB, exported in the current format, imports whole and adopts its winners."""
    from pathlib import Path
    path = Path(__file__).parents[2] / "benchmarks/results/2026-12-07-h100-tuning-465c4be.json"
    data = json.loads(path.read_text())
    assert data["schema"] == tunedb.SCHEMA_VERSION
    [device] = [DeviceIdentity(**{k: v for k, v in d.items() if k != "key"}) for d in data["devices"]]
    [build] = [BuildIdentity(**{k: v for k, v in b.items() if k != "key"}) for b in data["builds"]]
    with TuningDB(tmp_path / "t.sqlite") as db:
        assert db.import_json(data) == 1 + 1 + 561 + 7
        assert len(db.winners()) == 7 and db.export_json() == data
        mla = ProblemClass.parse("576/512 f16/f16 acc32 mask+v_in_k nq3 nkv3 gqa4")
        w = db.winner(device, build, mla)
        assert (w.variant, w.splits) == (
            "fa_cm1_k576_v512_f16f16_acc32_br64_bc32_wg256_sg32_regs1_osplit_vink_m16n8k16_mask_aligned", 1)
        assert w.kernel != "" and len(db.measurements(device, build, mla)) > 0


# --- kgen db ------------------------------------------------------------------------------------
def test_cli_export_import_show_reset_path(tmp_path, monkeypatch, capsys):
    src, dst = tmp_path / "src.sqlite", tmp_path / "dst" / "dst.sqlite"
    filled(src).close()
    monkeypatch.setenv("KGEN_DB", str(src))
    assert main(["db", "path"]) == 0 and capsys.readouterr().out.strip() == str(src)
    out_file = tmp_path / "export.json"
    assert main(["db", "export", "-o", str(out_file)]) == 0
    assert main(["db", "export"]) == 0
    exported = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert exported == json.loads(out_file.read_text()) and len(exported["winners"]) == 2

    monkeypatch.setenv("KGEN_DB", str(dst))
    assert main(["db", "show"]) == 0 and "no winners" in capsys.readouterr().out
    assert main(["db", "import", str(out_file)]) == 0
    assert "imported 9 record(s)" in capsys.readouterr().out
    assert main(["db", "show", "--device-key", DEV.key[:6]]) == 0
    table = capsys.readouterr().out
    assert "NVIDIA H100" in table and MASK.key in table and CM2 in table and f"{SPLIT}@4 9.5" in table
    # filled()'s winners hold no kernel digest: shown as changed (the dispatcher skips them).
    rows = [line for line in table.splitlines() if MASK.key in line]
    assert rows and all(" changed " in line for line in rows)
    assert main(["db", "show", "--device-key", DEV2.key]) == 0
    assert "no winners" in capsys.readouterr().out

    assert main(["db", "reset"]) == 0
    said = capsys.readouterr().out
    aside = [p for p in dst.parent.iterdir() if ".corrupt-" in p.name and not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1 and str(aside[0]) in said
    assert main(["db", "show"]) == 0 and "no winners" in capsys.readouterr().out


def test_cli_errors_exit_2_with_the_fix(tmp_path, monkeypatch, capsys):
    path = tmp_path / "t.sqlite"
    _junk(path)
    monkeypatch.setenv("KGEN_DB", str(path))
    assert main(["db", "show"]) == 2
    assert "kgen db reset" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("[" * 100000)
    assert main(["db", "reset"]) == 0
    assert main(["db", "import", str(bad)]) == 2
    assert "is not JSON" in capsys.readouterr().err
    bad.write_text(json.dumps({"format": "kgen-tuning-db"}))
    assert main(["db", "import", str(bad)]) == 2
    assert "exactly the fields" in capsys.readouterr().err


# --- merge: exports of several machines into one ----------------------------------------------
def _export(tmp_path, name, fill) -> str:
    with TuningDB(tmp_path / f"{name}.sqlite") as db:
        fill(db)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(db.export_json()))
    return str(path)


def test_merge_joins_machines_and_keeps_the_better_timed_measurement(tmp_path, capsys):
    def h100(db):
        db.record(DEV, BUILD, ok(us=10.0))
        db.set_winner(DEV, BUILD, win())

    def lavapipe(db):
        db.record(DEV2, BUILD, ok(us=900.0))
        db.set_winner(DEV2, BUILD, win(variant=SC, us=800.0))
        db.record(DEV, BUILD, dataclasses.replace(ok(us=11.0), runs=40))   # the same H100 timing, more runs

    a, b = _export(tmp_path, "a", h100), _export(tmp_path, "b", lavapipe)
    out = tmp_path / "merged.json"
    assert main(["db", "merge", a, b, "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "2 device(s), 1 build(s), 2 measurement(s), 2 winner(s)" in said and "1 measurement(s)" in said
    with TuningDB(tmp_path / "m.sqlite") as db:
        db.import_json(json.loads(out.read_text()))
        assert db.winner(DEV, BUILD, MASK).variant == CM2 and db.winner(DEV2, BUILD, MASK).variant == SC
        assert [m.median_us for m in db.measurements(DEV, BUILD, MASK)] == [11.0]


def test_merge_refuses_two_winners_of_one_class_by_name_and_writes_nothing(tmp_path, capsys):
    a = _export(tmp_path, "a", lambda db: db.set_winner(DEV, BUILD, win()))
    b = _export(tmp_path, "b", lambda db: db.set_winner(DEV, BUILD, win(variant=SPLIT, splits=4)))
    out = tmp_path / "merged.json"
    assert main(["db", "merge", a, b, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert MASK.key in err and "NVIDIA H100" in err and f"{CM2}@1 in {a}" in err and f"{SPLIT}@4 in {b}" in err
    assert not out.exists() and not out.with_name("merged.json.tmp").exists()
    same = _export(tmp_path, "c", lambda db: db.set_winner(DEV, BUILD, win()))
    assert main(["db", "merge", a, same, "-o", str(out)]) == 0   # the same decision twice is no conflict
    assert main(["db", "merge", a, "-o", str(out)]) == 2
    assert "at least two" in capsys.readouterr().err
