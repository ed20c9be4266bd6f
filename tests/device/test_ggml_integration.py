"""kgen inside ggml (integrations/ggml): the pinned ggml built with the patch and a kgen export
of heuristic defaults (`kgen export --cover ggml`, here for a sample of test-backend-ops'
FLASH_ATTN_EXT cases), then ggml's own test mode on them with kgen on: every case OK by ggml's
NMSE and NaN checks against its CPU backend, the ones kgen covers served by kgen, the rest by
ggml's shaders with the reason. On lavapipe here (kgen off is left to check.sh's full runs:
lavapipe compiles each of ggml's shader variants for minutes); the same scripts run on a GPU."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path

import pytest

from kgen.cli import main
from kgen.tools import ggml_cases
from kgen.tools.ggml_cases import GgmlCase

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "integrations" / "ggml"

# A sample across what the integration maps: prefill and decode, GQA, sinks, ALiBi, softcap,
# quantized caches, Q with heads inside rows, DeepSeek MLA (V a view of K), a broadcast mask over
# batches, and a KV type kgen leaves to ggml.
SAMPLE = [
    GgmlCase(64, 64, 8, 4, 1, 1024, 32, True, False, 0.0, 0.0, "f32", "f16", "f16"),
    GgmlCase(64, 64, 4, 1, 1, 113, 1, True, True, 0.0, 0.0, "f32", "q8_0", "q8_0"),
    GgmlCase(64, 64, 4, 1, 3, 113, 32, True, False, 8.0, 0.0, "f32", "q4_0", "q4_0"),
    GgmlCase(128, 128, 4, 4, 1, 512, 3, True, False, 0.0, 10.0, "f32", "f16", "f16"),
    GgmlCase(64, 64, 4, 1, 1, 512, 3, True, True, 0.0, 0.0, "f32", "f16", "f16", permuted=True),
    GgmlCase(576, 512, 1, 20, 1, 512, 1, False, False, 0.0, 0.0, "f32", "f16", "f16", v_in_k=True),
    GgmlCase(72, 72, 4, 1, 1, 113, 3, True, False, 0.0, 0.0, "f32", "q5_1", "q5_1"),
    GgmlCase(64, 64, 4, 1, 1, 113, 32, True, False, 0.0, 0.0, "f32", "iq4_nl", "iq4_nl"),
]


def _report():
    spec = importlib.util.spec_from_file_location("ggml_report", HERE / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sample_is_in_ggmls_case_list():
    cases = set(ggml_cases.eval_cases())
    assert all(c in cases for c in SAMPLE)


def test_ggml_runs_kgen_and_its_own_checks_pass(tmp_path, monkeypatch, capsys):
    build = ROOT / "build" / "ggml-ci"
    export = build / "kgen-export"
    monkeypatch.setattr(ggml_cases, "eval_cases", lambda: SAMPLE)
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "none.sqlite"))
    assert main(["export", "--format", "c", "--cover", "ggml", "-o", str(export)]) == 0
    assert "8 cases, 7 in 7 classes" in capsys.readouterr().out
    env = dict(os.environ, GGML_BUILD_DIR=str(build))
    done = subprocess.run(["bash", str(HERE / "build.sh"), f"-DGGML_VK_KGEN_EXPORT={export}"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    pattern = "|".join(re.escape(c.params) for c in SAMPLE)
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(HERE / "check.sh"), str(out), "-p", pattern],
                          env=dict(env, CHECK_MODES="test", CHECK_SIDES="kgen"), capture_output=True, text=True)
    on = _report().test_verdicts(out / "test-kgen.txt")
    assert set(on) == {c.params for c in SAMPLE}, done.stdout[-3000:]
    for c in SAMPLE:
        verdict, said = on[c.params]
        assert verdict == "OK", (c.params, on[c.params])
        if c.unsupported():
            assert said == f"fallback: {c.unsupported()}", (c.params, said)
        else:
            assert said.startswith("served fa_") and said.endswith(f" for {c.problem().key}"), (c.params, said)
    assert done.returncode == 0, done.stdout[-3000:]
