"""kgen inside ggml (integrations/ggml): the pinned ggml built with the patch and a kgen export
of heuristic defaults (`kgen export --cover ggml`, here for a sample of test-backend-ops'
FLASH_ATTN_EXT cases), then ggml's own test mode on them with kgen on: every case OK by ggml's
NMSE and NaN checks against its CPU backend, the ones kgen covers served by kgen, the rest by
ggml's shaders with the reason. On lavapipe here (kgen off is left to check.sh's full runs:
lavapipe compiles each of ggml's shader variants for minutes); the same scripts run on a GPU.
kgen-anchors, built with it, times two anchors' --small shapes with kgen on and off in one process."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
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


# kgen-anchors --small's P3 and L1 (Nkv / 16, Hkv / min(Hkv, 4)) as ggml cases, so the export
# carries their classes too.
ANCHORS = {
    "P3": GgmlCase(128, 128, 2, 4, 1, 1024, 1, True, False, 0.0, 0.0, "default", "f16", "f16"),
    "L1": GgmlCase(128, 128, 8, 1, 1, 256, 512, False, False, 0.0, 0.0, "default", "f16", "f16"),
}


def _report():
    spec = importlib.util.spec_from_file_location("ggml_report", HERE / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ggml_build(tmp_path_factory):
    """ggml built with a kgen export of heuristic defaults for the sample and the anchors' classes:
    (the build folder, the environment to run its binaries in)."""
    build = ROOT / "build" / "ggml-ci"
    export = build / "kgen-export"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(ggml_cases, "eval_cases", lambda: SAMPLE + list(ANCHORS.values()))
        mp.setenv("KGEN_DB", str(tmp_path_factory.mktemp("db") / "none.sqlite"))
        assert main(["export", "--format", "c", "--cover", "ggml", "-o", str(export)]) == 0
    assert "10 cases, 9 in 9 classes" in printed.getvalue()
    env = dict(os.environ, GGML_BUILD_DIR=str(build))
    done = subprocess.run(["bash", str(HERE / "build.sh"), f"-DGGML_VK_KGEN_EXPORT={export}"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return build, env


def test_the_sample_is_in_ggmls_case_list():
    cases = set(ggml_cases.eval_cases())
    assert all(c in cases for c in SAMPLE)


def test_ggml_runs_kgen_and_its_own_checks_pass(ggml_build, tmp_path):
    build, env = ggml_build
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


def test_kgen_anchors_times_both_sides_in_one_process(ggml_build, tmp_path):
    build, env = ggml_build
    out = tmp_path / "anchors.json"
    done = subprocess.run([str(build / "bin" / "kgen-anchors"), "--small", "--repeats", "3", "--case", "P3",
                           "--case", "L1", "--json", str(out)],
                          env=dict(env, GGML_VK_VISIBLE_DEVICES="0", GGML_BACKEND="Vulkan0", GGML_VK_KGEN_LOG="1"),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [c["id"] for c in result["cases"]] == list(ANCHORS)
    for c in result["cases"]:
        assert c["n"] >= 1 and c["ggml_us"] > 0 and c["kgen_us"] > 0, c
        assert len(c["ggml_times_us"]) == len(c["kgen_times_us"]) == 3, c
        assert min(c["ggml_times_us"] + c["kgen_times_us"]) > 0, c
        assert math.isfinite(c["nmse"]) and c["nmse"] <= 5e-4, c
    # The kgen-on side really ran kgen: the glue names the class it served each shape from.
    for case in ANCHORS.values():
        assert re.search(rf"kgen: served fa_\S+ for {re.escape(case.problem().key)}$", done.stderr, re.M), done.stderr[-3000:]
    assert "fallback" not in done.stderr, done.stderr[-3000:]
    assert done.stdout.count("\n") == 4 and done.stdout.startswith("| case |"), done.stdout
