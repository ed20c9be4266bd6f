"""`kgen bench` on lavapipe: the quick suite end to end (fitted shapes), the JSON it files,
torch and matplotlib reported as missing rather than crashing, and bad arguments refused
before any device work."""
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import kgen
import kgen.runtime
from kgen.tools import bench
from kgen import timing
from kgen import reference
from kgen.cli import main
from kgen.timing.roofline import Roofline
from kgen.tools.suites import P1, P3, P4, P5, Case, case_arg

FAKE_ROOFLINE = Roofline(device_key="test", device_name="test", copy_gbps=10.0,
                         matrix_tflops={"scalar_f32": 0.1, "scalar_f16": 0.05, "coopmat1": 1.0, "coopmat2": 1.0},
                         measured_at="2026-01-01T00:00:00+00:00")
TINY = Case("tiny causal", 1, 2, 16, 64, mask=True, causal=True)


@pytest.fixture
def no_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError


@pytest.fixture
def no_matplotlib(monkeypatch):
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def no_device(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("touched the device")
    monkeypatch.setattr(kgen.runtime, "open_device", refuse)


def test_quick_suite_end_to_end(tmp_path, monkeypatch, capsys, no_torch, no_matplotlib):
    monkeypatch.setattr(bench, "ceilings_of", lambda dev: FAKE_ROOFLINE)
    out = tmp_path / "results.json"
    assert main(["bench", "--suite", "quick", "--repeats", "2", "--warmup", "1", "--json", str(out),
                 "--png", str(tmp_path / "results.png")]) == 0
    printed = capsys.readouterr().out
    assert "[1/2]" in printed and "[2/2]" in printed and "PNG skipped: matplotlib" in printed
    doc = json.loads(out.read_text())
    assert {"command", "date", "suite", "kgen_version", "device", "build", "roofline", "results"} <= set(doc)
    assert doc["command"].startswith("kgen bench --suite quick --repeats 2")
    cpu = kgen.runtime.open_device().caps.device_type == "cpu"
    assert (doc["device"]["device_type"] == "cpu") == cpu and doc["roofline"]["copy_gbps"] == 10.0
    assert len(doc["results"]) == 2
    for r in doc["results"]:
        assert r["error"] is None and r["fitted"] == cpu and r["variant"].startswith("fa_") and r["splits"] >= 1
        # Fitted to a CPU, the shape actually run is recorded; a GPU runs the case as is.
        assert (r["shape"] != r["requested"]) == cpu
        for key in ("median_us", "p10_us", "p90_us"):
            assert math.isfinite(r["gpu"][key]) and r["gpu"][key] > 0
        assert r["gpu"]["runs"] == 2 and (r["gpu"]["sets"] >= 2 or not cpu)  # small inputs rotate
        assert r["tflops"] > 0 and r["kv_gbps"] > 0 and r["roofline_pct"] > 0 and r["copy_pct"] > 0
        assert r["check"]["scope"] in (("full",) if cpu else ("full", "sub")) and r["check"]["ok"]
        assert r["check"]["nmse"] <= bench.NMSE_MAX
        assert r["torch_us"] is None and r["torch_note"].startswith("n/a (torch not importable")
        if cpu:
            assert r["vs_reference"] == {} and r["meets_target"] is None  # not an H100
        assert set(r["host"]) == {"plan_first_ms", "plan_ms", "call_ms", "run_overhead_us"}
        assert all(math.isfinite(v) for v in r["host"].values())
    assert not (tmp_path / "results.png").exists()


def test_mla_case_reads_v_from_k(no_torch):
    inputs = bench.Inputs.random(P4.fitted(kgen.runtime.open_device().caps), seed=1)
    assert inputs.vt.data is inputs.kt.data and inputs.vt.shape[3] == 512 and inputs.v is None
    r = bench.bench_case(P4, repeats=1, warmup=0, roofline="n/a (test)", torch=True)
    assert r.error is None and "(V in K)" in r.shape and r.check.ok
    assert r.kv_bytes == r.dims["heads_kv"] * r.dims["n_kv"] * 576 * 2  # K only
    assert r.roofline_note == "n/a (test)" and r.roofline_pct is None


def test_nan_output_reports_no_time(monkeypatch):
    from kgen.planning.plan import Plan
    monkeypatch.setattr(Plan, "result", lambda self: np.full((1, 2, 16, 128), np.nan, np.float32))
    r = bench.bench_case(TINY, repeats=1, warmup=0, roofline="n/a", torch=False)
    assert r.gpu is None and r.tflops is None and "NaN" in r.error


def test_a_named_failure_is_that_case_s_error(monkeypatch):
    import kgen.api
    from kgen.errors import UnsupportedVariant

    def unsupported(*a, **k):
        raise UnsupportedVariant("fa_x", "no such path here")
    monkeypatch.setattr(kgen.api, "plan", unsupported)
    r = bench.bench_case(TINY, repeats=1, warmup=0, roofline="n/a", torch=False)
    assert r.gpu is None and r.error.startswith("UnsupportedVariant: fa_x")


def test_sub_problem_check_keeps_the_causal_diagonal(monkeypatch):
    case = Case("causal", 2, 2, 24, 80, mask=True, causal=True)
    x = bench.Inputs.random(case, seed=3)
    from kgen.quant import roundtrip
    out = reference.attention(x.q, roundtrip(x.k, "f16"), roundtrip(x.v, "f16"), mask=x.mask, causal=True)
    assert bench._check(case, x, out).scope == "full"
    monkeypatch.setattr(bench, "CHECK_MAX_FLOPS", case.flops / 10)
    sub = bench._check(case, x, out)
    assert sub.scope.startswith("sub:") and "rows 20-23" in sub.scope and sub.nmse < 1e-20
    wrong = out.copy()
    wrong[0, 1, -1] += 1.0
    assert not bench._check(case, x, wrong).ok
    monkeypatch.setattr(bench, "CHECK_MAX_FLOPS", 1.0)
    assert bench._check(case, x, out).scope.startswith("not checked")


def test_reference_figures_only_on_an_h100():
    r = bench.CaseResult(case=P1.name, requested="", shape="", fitted=False, dims={}, device="",
                         gpu=bench.Timing(300.0, 290.0, 310.0, 10, 1), check=bench.Check("full", 1e-6))
    for name, expect in (("NVIDIA H100 80GB HBM3", True), ("NVIDIA RTX 4090", False)):
        r.vs_reference, r.meets_target = {}, None
        bench._figures(r, P1, types.SimpleNamespace(name=name), "n/a", "coopmat2")
        assert bool(r.vs_reference) is expect
        if expect:
            assert r.vs_reference == {"llama.cpp": 945 / 300, "torch": 247 / 300} and r.meets_target
        else:
            assert r.meets_target is None
    assert r.tflops == pytest.approx(P1.flops / 300e-6 / 1e12)


def test_rotation_only_for_inputs_that_fit_the_l2():
    assert bench.rotation_sets(bench.working_bytes(P1)) == 1       # 268 MB of K+V
    assert bench.rotation_sets(bench.working_bytes(P4)) >= 4       # 19 MB: L2-resident
    assert bench.rotation_sets(1024) == timing.ROTATE_MAX
    assert bench.rotation_sets(40 << 20) == math.ceil(timing.ROTATE_SPAN / (40 << 20))


def test_torch_is_na_when_missing_or_without_cuda(monkeypatch, no_torch):
    us, note = bench.torch_sdpa_us(P3, repeats=1, warmup=0)
    assert us is None and note.startswith("n/a (torch not importable")
    assert bench.torch_sdpa_us(P5, repeats=1, warmup=0) == (None, "n/a (q8_0 KV: no torch equivalent)")
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: False))
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert bench.torch_sdpa_us(P3, repeats=1, warmup=0) == (None, "n/a (torch has no CUDA device)")

    def broken():
        raise RuntimeError("CUDA driver too old\nmore lines")
    fake.cuda.is_available = broken
    assert bench.torch_sdpa_us(P3, repeats=1, warmup=0) == (None, "n/a (RuntimeError: CUDA driver too old)")


def _results_file(tmp_path):
    r = bench.CaseResult(case="P3 decode 128", requested=P3.describe(), shape=P3.describe(), fitted=False,
                         dims={}, device="NVIDIA H100", gpu=bench.Timing(30.0, 29.0, 31.0, 10, 1),
                         reference_us={"llama.cpp": 54, "torch": 64}, torch_us=61.0)
    return bench.write_json([r], tmp_path / "r.json", command="kgen bench --suite quick", suite="quick")


def test_plot_without_matplotlib_says_so(tmp_path, no_matplotlib, no_device, capsys):
    path = _results_file(tmp_path)
    with pytest.raises(bench.PlotUnavailable, match="matplotlib"):
        bench.plot(path, tmp_path / "r.png")
    assert main(["bench", "--plot", str(path)]) == 2
    assert "matplotlib is not importable" in capsys.readouterr().err
    assert not (tmp_path / "r.png").exists()


def test_plot_writes_a_png(tmp_path, no_device):
    """`make test` installs matplotlib (the bench extra); a machine without it is covered by
    the PlotUnavailable test above."""
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.raises(bench.PlotUnavailable):
            bench.plot(_results_file(tmp_path))
        return
    png = bench.plot(_results_file(tmp_path))
    assert png == tmp_path / "r.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--suite", "nope"], "'nope': one of quick, llama"),
    (["--suite", "quick", "--repeats", "0"], f"must be 1..{bench.REPEATS_MAX}"),
    (["--suite", "quick", "--repeats", str(bench.REPEATS_MAX + 1)], f"must be 1..{bench.REPEATS_MAX}"),
    (["--suite", "quick", "--warmup", "-1"], "--warmup -1"),
    (["--suite", "quick", "--png", "x.png"], "give --json FILE too"),
    ([], "--suite is required: one of quick"),
    (["--suite", "quick", "--plot", "r.json"], "without --suite"),
    (["--plot", "/nonexistent/r.json"], "--plot /nonexistent/r.json: cannot read it (No such file"),
    (["--plot", str(Path(bench.__file__))], "not JSON"),
    (["--plot", str(Path(kgen.__file__).parent / "data" / "h100.json")], "not a results file"),
])
def test_bad_arguments_fail_before_device_work(argv, message, no_device, capsys):
    assert main(["bench", *argv]) == 2   # a usage error; 1 is for runs that fail
    err = capsys.readouterr().err
    assert err.startswith("kgen bench: ") and message in err and err.count("\n") == 1, err


def test_bench_case_checks_counts_first(no_device):
    with pytest.raises(ValueError, match=f"1..{bench.REPEATS_MAX}"):
        bench.bench_case(TINY, repeats=0)


def test_case_arg_picks_a_case_or_refuses_naming_the_cases():
    import argparse
    assert case_arg("h100-anchors")("P4 ") is P4
    with pytest.raises(argparse.ArgumentTypeError, match="no case of h100-anchors matches; its cases: P1"):
        case_arg("h100-anchors")("nonesuch")
