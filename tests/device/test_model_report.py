"""`kgen bench --model`'s report on lavapipe: per class the dispatcher's kernel against the
heuristic default (timed apart only where they differ), the per-step totals over all layers,
the JSON that carries them and the chart drawn from it."""
import importlib.util
import json
import sys

import pytest

from kgen import models
from kgen.cli import main
from kgen.identity import BuildIdentity, DeviceIdentity, kernel_digest
from kgen.runtime import open_device
from kgen.shapes import fold_gqa
from kgen.timing.roofline import Roofline
from kgen.tools import bench, model_report
from kgen.tools.bench import CaseResult, Timing
from kgen.tune.candidates import candidates
from kgen.tunedb import TuningDB
from kgen.tunedb.records import Winner

FAKE_ROOFLINE = Roofline(device_key="test", device_name="test", copy_gbps=10.0,
                         matrix_tflops={"scalar_f32": 0.1, "scalar_f16": 0.05, "coopmat1": 1.0, "coopmat2": 1.0},
                         measured_at="2026-01-01T00:00:00+00:00")


def _store_other_than_default(db_path, mc) -> str:
    """A tuned decision for the class of `mc` (as run here) naming a kernel other than the
    heuristic default; its uri."""
    caps = open_device(None).caps
    shapes = fold_gqa(mc.case.fitted(caps).shapes())
    found, default = candidates(shapes, caps)
    other = next(c for c in found if c.splits == 1 and c.variant.br != default.variant.br)
    with TuningDB(db_path) as db:
        db.set_winner(DeviceIdentity.of(caps), BuildIdentity.current(), Winner(
            problem=shapes.problem(), variant=other.variant.uri, splits=1, median_us=1.0, spread_us=0.0,
            kernel=kernel_digest(other.variant.uri)))
    return other.variant.uri


def test_bench_model_reports_tuned_against_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "db.sqlite"))
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(bench, "ceilings_of", lambda dev: FAKE_ROOFLINE)
    model = models.load("Qwen3-8B")
    prefill, decode = model.cases(contexts=(512,))
    tuned_uri = _store_other_than_default(tmp_path / "db.sqlite", decode)
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["bench", "--model", "Qwen3-8B", "--context", "512", "--repeats", "3", "--warmup", "1",
                 "--json", str(out), "--png", str(png)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    report = doc["model_report"]
    rows = {r["case"]: r for r in report["classes"]}
    assert list(rows) == [prefill.case.name, decode.case.name]
    for r, run in zip(report["classes"], doc["results"]):
        assert r["tuned_us"] > 0 and r["default_us"] > 0 and r["layers"] == 36
        assert r["tuned_us"] == run["gpu"]["median_us"] and r["tuned_variant"] == run["variant"]
        assert 0 < r["tuned_roofline_pct"] and 0 < r["default_roofline_pct"]
    caps = open_device(None).caps
    # No decision for the prefill class: the dispatcher runs the default, timed once.
    p = rows[prefill.case.name]
    assert p["chosen_by"] == "heuristic default" and p["default_is_tuned"]
    assert p["default_us"] == p["tuned_us"]
    assert p["default_variant"] == bench.heuristic_choice(prefill.case.fitted(caps), caps).variant.uri
    # The stored decision runs for decode; the default is forced and timed apart.
    d = rows[decode.case.name]
    assert d["tuned_variant"] == tuned_uri and d["chosen_by"].startswith("tuned, exact")
    assert not d["default_is_tuned"] and d["default_variant"] != tuned_uri
    assert d["default_variant"] == bench.heuristic_choice(decode.case.fitted(caps), caps).variant.uri
    (apart,) = report["default_results"]
    assert apart["case"] == decode.case.name and apart["chosen_by"] == bench.HEURISTIC_FORCED
    assert apart["gpu"]["median_us"] == d["default_us"] and apart["check"]["ok"]
    # The totals: per step, each class's time x the layers of its kind, summed over the kinds.
    assert [k["layers"] for k in report["layer_kinds"]] == [36]
    assert [s["step"] for s in report["summary"]] == ["prefill ctx512 f16", "decode1 ctx512 f16"]
    for s in report["summary"]:
        mine = [r for r in report["classes"] if r["step"] == s["step"]]
        for which in ("tuned_us", "default_us"):
            assert s[which] == pytest.approx(sum(r[which] * r["layers"] for r in mine), rel=1e-12)
        assert s["layers"] == report["num_hidden_layers"] and s["note"] is None
    # The printed report: every class, and each step's totals as the JSON holds them.
    for name in rows:
        assert name in printed
    for s in report["summary"]:
        line = next(line for line in printed.splitlines() if line.startswith(f"Qwen3-8B {s['step']}:"))
        assert (f"tuned {model_report._fmt(s['tuned_us'])}, heuristic default "
                f"{model_report._fmt(s['default_us'])}") in line
    if importlib.util.find_spec("matplotlib") is None:
        assert "PNG skipped: matplotlib" in printed and not png.exists()
        return
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["bench", "--plot", str(out), "--png", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _result(name: str, us: float | None) -> CaseResult:
    r = CaseResult(case=name, requested="", shape="", fitted=False, dims={}, device="test")
    if us is None:
        r.error = "UnsupportedVariant: test"
    else:
        r.gpu = Timing(us, us, us, 1, 1)
    return r


def test_totals_need_every_layer_kind_and_every_time():
    """gpt-oss-20b: 12 sliding and 12 full layers."""
    model = models.load("gpt-oss-20b")
    sliding, full = [mc for mc in model.cases(contexts=(512,)) if mc.phase == "prefill"]
    timings = [model_report.ClassTiming(mc, _result(mc.case.name, us), _result(mc.case.name, 2 * us))
               for mc, us in ((sliding, 10.0), (full, 30.0))]
    (step,) = model_report.totals(model, timings)
    assert (step.total("tuned"), step.total("default"), step.layers) == (480.0, 960.0, 24)
    (alone,) = model_report.totals(model, timings[:1])
    assert alone.missing == ["full"] and alone.total("tuned") is None and "full" in alone.why_no_total
    timings[1].default = _result(full.case.name, None)
    (failed,) = model_report.totals(model, timings)
    assert failed.total("default") is None and full.case.name in failed.why_no_total
    assert "no total" in model_report.summary_lines(model, [failed])[0]
