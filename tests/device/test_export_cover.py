"""`kgen export --cover ggml`: ggml's FLASH_ATTN_EXT cases as kgen classes, and an export that
carries a heuristic default for every class the DB has not tuned (kgen.tools.ggml_cases)."""
from __future__ import annotations

import json

from kgen.cli import main
from kgen.planning.choose import choose_variant
from kgen.planning.probe import open_for_kernels
from kgen.tools import ggml_cases
from kgen.tools.ggml_cases import GgmlCase, classes, eval_cases
from kgen.types import KvType


def test_the_case_list_follows_test_backend_ops_loops():
    cases = eval_cases()
    # The long-KV prefill block comes first: 2 kv x 3 heads x 2 nb x 3 types.
    assert cases[:36] == [GgmlCase(hs, hs, 8, 4, 1, kv, nb, True, False, 0.0, 0.0, "f32", t, t)
                          for kv in (1024, 2048) for hs in (64, 128, 256) for nb in (32, 64)
                          for t in ("f16", "q8_0", "q4_0")]
    assert cases[-1] == GgmlCase(64, 128, 4, 1, 1, 128, 2, True, False, 0.0, 0.0, "f32", "q4_0", "q2_0")
    assert len(set(cases)) == len(cases)
    # Its filters: softcap only at head 128, one KV head only for the MLA shapes, V a view of K
    # exactly for 576/512, other types than f16 only at heads 64 and 72.
    assert all(c.softcap == 0 or c.hsk == 128 for c in cases)
    assert all(c.nh == 4 or c.hsk in (320, 576) for c in cases if c.nr2 != 4 or c.kv < 1024)
    assert all(c.v_in_k == (c.hsk == 576) for c in cases)
    assert {c.type_k for c in cases if c.hsk not in (64, 72)} <= {"f16", "q8_0", "q4_0", "q1_0", "q2_0"}


def test_classes_fold_and_pad_as_the_dispatcher_does():
    decode = GgmlCase(64, 64, 4, 4, 1, 512, 1, True, False, 0.0, 0.0, "f32", "f16", "f16")
    s = decode.shapes()   # one query row, a row mask: the 4 query heads of a KV head become rows
    assert (s.heads_q, s.heads_kv, s.n_q) == (4, 4, 4)
    permuted = GgmlCase(64, 64, 4, 4, 1, 512, 3, True, False, 0.0, 0.0, "f32", "f16", "f16", permuted=True)
    assert permuted.shapes().heads_q == 16   # heads inside Q's rows and three rows: not folded
    padded = GgmlCase(72, 72, 4, 1, 1, 96, 2, True, False, 0.0, 0.0, "f32", "q4_0", "q8_0")
    p = padded.shapes()   # heads padded to whole 32-element blocks, as test-backend-ops pads them
    assert (p.head_k, p.head_v, p.k_type, p.v_type) == (96, 96, KvType.Q4_0, KvType.Q8_0)
    mla = GgmlCase(576, 512, 1, 20, 1, 512, 3, False, False, 0.0, 0.0, "f32", "f16", "f16", v_in_k=True)
    assert mla.shapes().v_in_k and mla.problem().v_in_k
    problems, refused = classes([decode, padded, GgmlCase(64, 64, 4, 1, 1, 96, 2, True, False, 0.0, 0.0, "f32",
                                                          "bf16", "bf16")])
    assert [(p.key, sh) for p, sh in problems] == [(decode.problem().key, decode.shapes()),
                                                  (padded.problem().key, padded.shapes())]
    assert refused == {"KV type bf16/bf16": 1}


def test_export_cover_adds_a_default_for_each_untuned_class(tmp_path, monkeypatch, capsys):
    few = [GgmlCase(64, 64, 4, 4, 1, 512, 1, True, False, 0.0, 0.0, "f32", "f16", "f16"),
           GgmlCase(64, 64, 4, 1, 1, 113, 32, True, True, 8.0, 0.0, "f32", "q8_0", "q8_0"),
           GgmlCase(64, 64, 4, 1, 1, 113, 32, True, True, 8.0, 0.0, "f32", "q8_0", "q8_0", permuted=True),
           GgmlCase(64, 64, 4, 1, 1, 96, 2, True, False, 0.0, 0.0, "f32", "iq4_nl", "iq4_nl")]
    monkeypatch.setattr(ggml_cases, "eval_cases", lambda: few)
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "absent.sqlite"))   # no DB: defaults alone
    assert main(["export", "--format", "json", "--cover", "ggml", "-o", str(tmp_path / "out")]) == 0
    said = capsys.readouterr().out
    assert "4 cases, 3 in 2 classes" in said and "0 tuned, 2 heuristic defaults" in said
    assert "KV type iq4_nl/iq4_nl (1)" in said
    table = json.loads((tmp_path / "out" / "kgen_dispatch.json").read_text())
    caps = open_for_kernels().caps
    by_class = {e["class"]: e for e in table["entries"]}
    assert set(by_class) == {few[0].problem().key, few[1].problem().key}
    for case in few[:2]:
        v, splits, _ = choose_variant(case.shapes(), caps, None, None, tuned=False)
        e = by_class[case.problem().key]
        assert (e["variant"], e["splits"], e["chosen_by"]) == (v.uri, splits, "heuristic default")


def test_export_without_cover_still_needs_winners(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "absent.sqlite"))
    assert main(["export", "--format", "json", "-o", str(tmp_path / "out")]) == 2
    assert "no tuning DB" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_export_model_adds_a_default_for_each_class_of_the_model(tmp_path, monkeypatch, capsys):
    """`kgen export --model`: the model's classes (each once, folded as plans run them) get the
    heuristic default; bad model options exit 2 before any device is opened."""
    from kgen import models
    from kgen.shapes import fold_gqa
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "absent.sqlite"))
    out = tmp_path / "out"
    assert main(["export", "--format", "json", "--model", "Gemma-2-9B", "--context", "4096,32768", "-o", str(out)]) == 0
    said = capsys.readouterr().out
    cases = models.load("Gemma-2-9B").cases(contexts=(4096, 32768), ubatch=models.DEFAULT_UBATCH,
                                             decode_batch=models.DEFAULT_DECODE_BATCH,
                                             kv_types=models.kv_type_pairs(None, None, None),
                                             precisions=models.DEFAULT_PRECISIONS)
    want = {fold_gqa(mc.case.shapes()).problem().key for mc in models.distinct_classes(cases)}
    table = json.loads((out / "kgen_dispatch.json").read_text())
    assert {e["class"] for e in table["entries"]} == want and len(want) >= 3
    assert all(e["chosen_by"] == "heuristic default" for e in table["entries"])
    assert f"0 tuned, {len(want)} heuristic defaults" in said
    assert main(["export", "--format", "json", "--context", "0", "-o", str(tmp_path / "bad")]) == 2
    assert "give --model" in capsys.readouterr().err and not (tmp_path / "bad").exists()
