"""`kgen tune` killed, run twice at once, or with nothing passing, on the default device (a small
class, a few candidates): a SIGKILL during a check costs that candidate one strike, not its
place; concurrent tuners of one DB agree on the winner; a run with no winner exits 1."""
import os
import subprocess
import sys
import textwrap

from helpers import ROOT
from kgen.cli import main
from kgen.identity import BuildIdentity, DeviceIdentity
from kgen.models import parse_shape
from kgen.runtime import open_device
from kgen.shapes import fold_gqa
from kgen.tune import Outcome, candidates
from kgen.tune.measure import GpuEvaluator
from kgen.tune.search import order_for
from kgen.tunedb import TuningDB
from kgen.tunedb.records import TRANSIENT, is_crash

SHAPE = "1,2,2,16,256,64,64"   # B, Hq, Hkv, Nq, Nkv, Dk, Dv
TUNE = ["tune", "--shape", SHAPE, "--max-evals", "3", "--runs", "3"]

# Runs `kgen tune` with the candidate check patched to SIGKILL the process at the check numbered
# argv[1] (an OOM kill, a power cut): no finally, no atexit, the marker stays behind.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from kgen.tune.measure import GpuEvaluator
    real, calls = GpuEvaluator.check, []
    def check(self, c):
        calls.append(c)
        if len(calls) == int(sys.argv[1]):
            print("killed at", c.name, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, c)
    GpuEvaluator.check = check
    from kgen.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _env(db) -> dict:
    return {**os.environ, "KGEN_DB": str(db), "COLUMNS": "400"}


def _timed():
    """The shapes `kgen tune --shape SHAPE` times on this device."""
    return fold_gqa(parse_shape(SHAPE).fitted(open_device(None).caps).shapes())


def _class():
    return DeviceIdentity.of(open_device(None).caps), BuildIdentity.current(), _timed().problem()


def test_a_check_killed_by_sigkill_is_checked_again_on_resume(tmp_path, monkeypatch):
    db_path = tmp_path / "t.sqlite"
    killed = subprocess.run([sys.executable, "-c", KILLER, "2", *TUNE], cwd=ROOT, env=_env(db_path),
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    victim = killed.stdout.split("killed at ", 1)[1].strip()
    device, build, problem = _class()
    with TuningDB(db_path) as db:
        assert [m["variant"] for m in db.markers(device, build, problem)] == [victim.partition("@")[0]]
        assert db.winner(device, build, problem) is None
    checked = []
    real = GpuEvaluator.check
    monkeypatch.setattr(GpuEvaluator, "check", lambda self, c: checked.append(c.name) or real(self, c))
    monkeypatch.setenv("KGEN_DB", str(db_path))
    assert main(TUNE) == 0
    assert victim in checked   # one strike, not skipped forever
    with TuningDB(db_path) as db:
        m = next(m for m in db.measurements(device, build, problem)
                 if f"{m.variant}@{m.splits}".removesuffix("@1") == victim)
        assert not is_crash(m.reason) and (m.status != "ok" or m.runs >= 3)
        assert db.markers(device, build, problem) == [] and db.winner(device, build, problem) is not None


def test_two_concurrent_tunes_of_one_db_agree_on_the_winner(tmp_path):
    db_path = tmp_path / "t.sqlite"
    procs = [subprocess.Popen([sys.executable, "-m", "kgen.cli", *TUNE], cwd=ROOT, env=_env(db_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    device, build, problem = _class()
    with TuningDB(db_path) as db:
        w = db.winner(device, build, problem)
        stored = db.measurements(device, build, problem)
        assert db.markers(device, build, problem) == []
    name = f"{w.variant}@{w.splits}".removesuffix("@1")
    assert all(name in out and "none passed" not in out for out, _ in outs)
    assert not any(is_crash(m.reason) for m in stored)
    fastest = min(m.median_us for m in stored if m.status == "ok")
    assert w.median_us - w.spread_us <= fastest + 1e-9 or w.median_us == fastest


def test_a_run_with_no_winner_exits_1_with_the_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "t.sqlite"))
    monkeypatch.setattr(GpuEvaluator, "check",
                        lambda self, c: Outcome(c, "wrong", nmse=0.5, reason="NMSE 0.5 > 0.0005 (injected)"))
    assert main(TUNE) == 1
    err = capsys.readouterr().err
    assert "no class got a winner" in err and "3 wrong" in err and "NMSE 0.5" in err


def test_a_compiler_killed_by_a_signal_is_compiled_again_by_the_next_tune(tmp_path, monkeypatch):
    """A glslang wrapper that SIGSEGVs on one variant's source, through the real compile path."""
    from kgen.toolchain import find_compiler
    real = find_compiler().path
    wrapper = tmp_path / "glslang"
    wrapper.write_text(f'#!/bin/sh\nfor a; do case "$a" in *"$KGEN_TEST_VICTIM"*.comp) kill -SEGV $$;; esac; done\n'
                       f'exec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    device, build, problem = _class()
    cands, default = candidates(_timed(), open_device(None).caps)
    victim = order_for("random", cands, default, seed=problem.key)[1]
    env = {**_env(tmp_path / "t.sqlite"), "KGEN_GLSLANG": str(wrapper), "KGEN_CACHE_DIR": str(tmp_path / "cache"),
           "KGEN_TEST_VICTIM": victim.variant.uri}
    first = subprocess.run([sys.executable, "-m", "kgen.cli", *TUNE], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    with TuningDB(tmp_path / "t.sqlite") as db:
        m = db.measurement(device, build, problem, victim.variant.uri, victim.splits)
        assert m.status == "failed" and m.reason.startswith(TRANSIENT)
    again = subprocess.run([sys.executable, "-m", "kgen.cli", *TUNE], cwd=ROOT, env={**env, "KGEN_TEST_VICTIM": "NO_VICTIM"},
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    with TuningDB(tmp_path / "t.sqlite") as db:
        m = db.measurement(device, build, problem, victim.variant.uri, victim.splits)
        assert not m.reason.startswith(TRANSIENT)
