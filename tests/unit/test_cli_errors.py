"""Every refusal or failure of the command line is one line on stderr, naming what is wrong and
how to fix it, with exit code 2 (bad arguments, knobs, input files) or 1 (the system refused a
file or folder); never a traceback. Also: boolean knob spellings and Variant field types."""
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT
from kgen import knobs
from kgen.errors import InvalidVariant, KnobError
from kgen.variant import Variant

SC = "fa_sc_k64_v64_f16f16_acc32_br8_bc32_wg128_sg32_ds8_rs1_stage_mask"


def kgen(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kgen.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **env}, timeout=300)


def assert_one_line(result: subprocess.CompletedProcess, code: int, *names: str) -> str:
    err = result.stderr
    assert result.returncode == code, (result.returncode, err[-2000:])
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-2000:]
    for name in names:
        assert name in err, err
    return err


@pytest.fixture
def blocked(tmp_path) -> str:
    """A path that cannot be created: its parent is a regular file (refused even for root)."""
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("x")
    return str(in_the_way / "sub" / "x")


@pytest.mark.parametrize("command", [["db", "show"], ["db", "reset"], ["db", "export"]])
def test_db_commands_with_an_unusable_db_path_fail_in_one_line(command, blocked):
    assert_one_line(kgen(*command, KGEN_DB=blocked), 1, "a-file", "is a file where a folder is needed")


def test_db_export_to_a_missing_folder_fails_in_one_line(tmp_path):
    result = kgen("db", "export", "-o", str(tmp_path / "none" / "x.json"), KGEN_DB=str(tmp_path / "db.sqlite"))
    assert_one_line(result, 1, str(tmp_path / "none" / "x.json"), "No such file or directory")


def test_export_into_an_unusable_folder_fails_in_one_line(tmp_path, blocked, monkeypatch, capsys):
    from kgen.cli import main
    from kgen.identity import BuildIdentity, DeviceIdentity
    from kgen.problem import ProblemClass
    from kgen.tunedb import TuningDB, Winner
    db = tmp_path / "db.sqlite"
    device = DeviceIdentity(vendor_id=0x10005, device_id=0, driver_id=13, driver_version=1,
                            pipeline_cache_uuid="ff" * 16, name="llvmpipe")
    with TuningDB(db) as t:  # one winner, so that export gets as far as writing
        t.set_winner(device, BuildIdentity.current(), Winner(
            ProblemClass(head_k=64, head_v=64, features=("mask",)), SC, 1, 10.0, 0.5, strategy="exhaustive"))
    monkeypatch.setenv("KGEN_CACHE_DIR", str(tmp_path / "spirv"))
    assert main(["export", "--format", "json", "--all-builds", "--db", str(db), "-o", blocked]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file where a folder is needed" in err


def test_bad_jobs_knob_stops_tune_before_any_thread(tmp_path):
    err = assert_one_line(kgen("tune", "--max-evals", "1", KGEN_JOBS="abc", KGEN_DB=str(tmp_path / "db")),
                          2, "KGEN_JOBS='abc'", "whole number")
    assert "Thread" not in err


def test_bad_device_knob_is_one_line():
    assert_one_line(kgen("space", KGEN_DEVICE="99"), 2, "KGEN_DEVICE=99", "device(s)")


def test_unknown_kv_type_names_the_option():
    assert_one_line(kgen("space", "--caps", str(ROOT / "kgen" / "data" / "h100.json"), "--k-type", "bogus"),
                    2, "--k-type", "bogus", "q8_0")


@pytest.mark.parametrize("content, says", [(None, "cannot read it"), ("{not json", "not JSON"),
                                           ("[1, 2]", "capability records"), ('{"name": 3}', "capability records"),
                                           ("folder", "cannot read it")])
def test_bad_caps_file_is_one_line(tmp_path, capsys, content, says):
    from kgen.cli import main
    path = tmp_path / "caps.json"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    assert main(["space", "--caps", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--caps {path}" in err and says in err, err


def test_usage_error_is_one_line():
    assert_one_line(kgen("space", "--head-k", "many"), 2, "--head-k", "kgen space --help")


# --- boolean knobs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, value", [("1", True), ("true", True), ("Yes", True), ("ON", True), (" on ", True),
                                        ("0", False), ("false", False), ("No", False), ("off", False),
                                        ("OFF", False), ("", False)])
def test_boolean_knob_spellings(monkeypatch, raw, value):
    monkeypatch.setenv("KGEN_AUTOTUNE", raw)
    assert knobs.get("KGEN_AUTOTUNE") is value


@pytest.mark.parametrize("raw", ["maybe", "2", "enable", "offf", "-1"])
def test_boolean_knob_refuses_other_spellings(monkeypatch, raw):
    monkeypatch.setenv("KGEN_AUTOTUNE", raw)
    with pytest.raises(KnobError) as info:
        knobs.get("KGEN_AUTOTUNE")
    text = str(info.value)
    assert f"KGEN_AUTOTUNE={raw!r}" in text and "1/true/yes/on" in text and "0/false/no/off" in text


@pytest.mark.parametrize("name, raw", [("KGEN_JOBS", "-2"), ("KGEN_DEBUG", "x"), ("KGEN_COMPILE_TIMEOUT", "nan"),
                                       ("KGEN_VALIDATION", "sure")])
def test_validate_names_the_bad_knob(monkeypatch, name, raw):
    monkeypatch.setenv(name, raw)
    with pytest.raises(KnobError, match=name):
        knobs.validate()


# --- Variant field types -------------------------------------------------------------------------
@pytest.mark.parametrize("change, says", [({"br": 8.0}, "br=8.0: a whole number"), ({"wg": "128"}, "wg='128'"),
                                          ({"row_split": True}, "row_split=True"), ({"mask": 1}, "mask=1: True or False"),
                                          ({"causal": "yes"}, "causal='yes'")])
def test_variant_refuses_wrong_field_types(change, says):
    v = Variant.parse(SC)
    with pytest.raises(InvalidVariant, match=says):
        dataclasses.replace(v, **change)


def test_variant_takes_numpy_integers_as_ints():
    v = Variant.parse(SC)
    w = dataclasses.replace(v, br=np.int64(8), bc=np.int32(32))
    assert w == v and type(w.br) is int and w.uri == SC


# --- bad arguments of each command: exit 2 (usage), one line naming the command -------------------
@pytest.mark.parametrize("argv, names", [
    (["bench", "--suite", "quick", "--repeats", "0"], ["kgen bench: --repeats 0", "1..10000"]),
    (["bench", "--plot", str(ROOT / "kgen" / "data" / "h100.json")], ["kgen bench: --plot", "not a results file"]),
    (["tune", "--runs", "1"], ["kgen tune: runs=1", ">= 3"]),
    (["export", "--format", "json", "-o", "{tmp}/out", "--context", "4096"], ["kgen export: --context", "give --model"]),
    (["export", "--format", "json", "-o", "{tmp}/out", "--cover", "ggml", "--device", "abc"], ["--device", "'abc'"]),
    (["model", "show", "Qwen3-8B", "--context", "0"], ["kgen model show: --context 0"]),
    (["db", "import", "{tmp}/no-export.json"], ["no-export.json", "No such file"]),
])
def test_bad_arguments_of_each_command_exit_2_in_one_line(argv, names, tmp_path):
    result = kgen(*(a.format(tmp=tmp_path) for a in argv), KGEN_DB=str(tmp_path / "db.sqlite"))
    assert_one_line(result, 2, *names)
    assert not (tmp_path / "out").exists() and not (tmp_path / "db.sqlite").exists()
