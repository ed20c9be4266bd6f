"""`kgen tune --model` and `kgen bench --model` on the default device (lavapipe in CI): a preset's
classes tuned and stored, and the window, softcap, scale, sinks and MLA cases a model derives
checked against the float64 reference."""
import re

from kgen import models
from kgen.cli import main
from kgen.identity import BuildIdentity, DeviceIdentity
from kgen.runtime import open_device
from kgen.shapes import fold_gqa
from kgen.tools import bench
from kgen.tunedb import TuningDB


def test_tune_a_preset_stores_a_winner_per_class(tmp_path, monkeypatch, capsys):
    """The lavapipe run of the speed target (its time is a figure of docs/models.md, not asserted)."""
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "m.sqlite"))
    assert main(["tune", "--model", "Qwen3-8B", "--context", "512", "--max-evals", "2", "--runs", "3"]) == 0
    err = capsys.readouterr().err
    assert "kgen tune --model Qwen3-8B: 2 case(s)" in err and "rejected" not in err
    per_case = re.findall(r"^  (.+): \d+ s, (\d+) candidate\(s\)$", err, re.M)
    assert [name for name, _ in per_case] == ["Qwen3-8B prefill full ctx512 f16", "Qwen3-8B decode1 full ctx512 f16"]
    caps = open_device(None).caps
    expected = {fold_gqa(mc.case.fitted(caps).shapes()).problem().key
                for mc in models.load("Qwen3-8B").cases(contexts=(512,))}
    with TuningDB(tmp_path / "m.sqlite") as db:
        stored = {w.problem.key for _, _, w in db.winners(DeviceIdentity.of(caps), BuildIdentity.current())}
    assert stored == expected and len(stored) == 2


def test_model_features_run_right_on_the_device():
    """A sliding window with sinks (gpt-oss), softcap with Gemma 2's scale, and absorbed MLA
    in q8_0 (DeepSeek-V2-Lite), each as `kgen bench --model` runs it."""
    dev = open_device(None)
    picked = [
        models.load("gpt-oss-20b").cases(contexts=(512,), decode_batch=(4,))[:2],   # prefill, decode4: sliding
        models.load("Gemma-2-9B").cases(contexts=(512,))[:1],
        models.load("DeepSeek-V2-Lite").cases(contexts=(512,), kv_types=(("q8_0", "q8_0"),))[1:],
    ]
    for mc in (mc for group in picked for mc in group):
        case = mc.case
        assert case.window or case.softcap or case.mla
        r = bench.bench_case(case, dev, repeats=2, warmup=1, roofline="n/a (test)", torch=False)
        assert r.error is None, (case.name, r.error)
        assert r.check.ok, (case.name, r.check)
        for name in ("window", "softcap", "scale", "sinks"):
            assert r.dims.get(name, bench.RUNTIME_FEATURES[name]) == getattr(case, name)
