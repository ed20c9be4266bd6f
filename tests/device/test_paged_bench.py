"""`kgen bench --paged` on lavapipe: the small batches end to end through the CLI with every
figure in the JSON, the subsampled check the issue's sizes use, a wrong output reported as
wrong, and bad arguments refused before any device work. Speed is never asserted."""
import json
import math
import sys

import numpy as np
import pytest

import kgen.runtime
from kgen.cli import main
from kgen.reference import NMSE_MAX
from kgen.tools import paged_bench


@pytest.fixture
def no_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError


def test_small_suite_end_to_end(tmp_path, capsys, no_torch):
    out = tmp_path / "paged.json"
    assert main(["bench", "--paged", "--repeats", "2", "--warmup", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[6/6] mla-h128" in printed and "K+V GB/s" in printed
    doc = json.loads(out.read_text())
    assert doc["command"] == f"kgen bench --paged --repeats 2 --warmup 1 --json {out}"
    assert doc["suite"] == "paged (small)" and doc["copy_gbps"] > 0 and doc["device"]["device_type"] == "cpu"
    by_name = {r["case"]: r for r in doc["results"]}
    assert list(by_name) == [c.name for c in paged_bench.SMALL]
    for r in by_name.values():
        assert r["error"] is None and r["variant"].endswith(f"_pg{r['block_size']}") and r["splits"] >= 1
        assert r["chosen_by"] == "heuristic default"
        for key in ("median_us", "p10_us", "p90_us"):
            assert math.isfinite(r["gpu"][key]) and r["gpu"][key] > 0
        assert r["gpu"]["runs"] == 2
        assert r["kv_gbps"] == pytest.approx(r["kv_bytes"] / (r["gpu"]["median_us"] * 1e3))
        assert r["copy_pct"] == pytest.approx(100 * r["kv_gbps"] / doc["copy_gbps"])
        assert r["check"]["scope"] == "full" and r["check"]["ok"] and r["check"]["nmse"] <= NMSE_MAX
        dense = r["dense"]
        assert dense["gpu"]["median_us"] > 0 and dense["check"]["ok"] and dense["check"]["nmse"] <= NMSE_MAX
        assert r["vs_dense"] == pytest.approx(dense["gpu"]["median_us"] / r["gpu"]["median_us"])
        assert r["torch"]["median_us"] is None and r["torch"]["note"].startswith("n/a (")
        assert all(t["met"] is None for t in r["targets"])   # judged on the H100 only
    # The K+V bytes: a uniform batch's are a dense decode's; mixed and its baseline hold the same.
    f16 = by_name["decode-f16"]
    assert f16["kv_bytes"] == 4 * 256 * 8 * 2 * 128 * 2 and f16["dense_pct"] == pytest.approx(100 * f16["vs_dense"])
    assert by_name["mixed-decode"]["kv_bytes"] == by_name["uniform-decode"]["kv_bytes"]
    assert by_name["mla-h16"]["kv_bytes"] == 2 * 256 * 576 * 2    # V inside K: K's bytes only
    for case, base in (("decode-q8_0", "decode-f16"), ("mixed-decode", "uniform-decode")):
        ratio = by_name[case]["gpu"]["median_us"] / by_name[base]["gpu"]["median_us"]
        assert by_name[case]["time_ratio"] == pytest.approx(ratio)
        assert by_name[case]["targets"][0]["value"] == pytest.approx(ratio)
    assert [t["target"] for t in f16["targets"]] == ["dense_pct >= 80", "copy_pct >= 70"]


def test_issue_sizes_keep_the_bytes_they_compare():
    full = {c.name: c for c in paged_bench.FULL}
    f16 = full["decode-f16"]
    assert f16.seq_lens == (4096,) * 64 and f16.padded().kv_bytes == f16.kv_bytes
    assert full["mixed-decode"].seq_lens == (32768,) + (512,) * 63
    assert full["mixed-decode"].kv_bytes == full["uniform-decode"].kv_bytes
    assert (full["mla-h16"].heads_q, full["mla-h128"].heads_q, full["mla-h16"].block_size) == (16, 128, 64)
    assert [c.name for c in paged_bench.SMALL] == list(full)
    assert [c.name for c in paged_bench.pick(paged_bench.FULL, ["q8"])] == ["decode-f16", "decode-q8_0"]


def test_a_subsampled_check_compares_the_right_rows(monkeypatch):
    """Past CHECK_KEYS (as at the issue's sizes) the reference runs on the first, last and longest
    sequences' pages only; the dense reference is checked on the rows padding leaves exact."""
    monkeypatch.setattr(paged_bench, "CHECK_KEYS", 100)
    results = paged_bench.run(paged_bench.pick(paged_bench.SMALL, ["mixed"]), repeats=1, warmup=0, torch=False)
    mixed = results[1]
    assert mixed["case"] == "mixed-decode" and mixed["check"]["scope"] == "sequences 0, 3"
    assert mixed["check"]["ok"] and mixed["check"]["nmse"] <= NMSE_MAX
    assert mixed["dense"]["check"]["scope"] == "sequences 0" and mixed["dense"]["check"]["ok"]
    assert results[0]["dense"]["check"]["scope"] == "sequences 0, 3"   # uniform: nothing padded


def test_a_wrong_output_is_reported(monkeypatch, capsys, no_torch):
    """Two sequences' rows swapped (a table or query-start mix-up) fail the check and the command."""
    real = paged_bench.run_paged

    def swapped(*args, **kw):
        out, figures = real(*args, **kw)
        return out[[1, 0, *range(2, len(out))]], figures

    monkeypatch.setattr(paged_bench, "run_paged", swapped)
    assert main(["bench", "--paged", "--case", "mixed", "--repeats", "1", "--warmup", "0"]) == 1
    captured = capsys.readouterr()
    assert "WRONG" in captured.out
    assert "2 case(s) failed or gave wrong output: uniform-decode, mixed-decode" in captured.err


@pytest.mark.parametrize("argv, message", [
    (["--quick"], "give --paged too"),
    (["--paged", "--suite", "quick"], "--suite: not with --paged"),
    (["--paged", "--png", "x.png"], "--png: not with --paged"),
    (["--paged", "--context", "4096"], "--context: not with --paged"),
    (["--paged", "--case", "prefill"], "no paged case matches; the cases: decode-f16"),
    (["--paged", "--warmup", "-1"], "--warmup -1: must be 0..10000"),
])
def test_bad_arguments_are_refused_before_any_device_work(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(kgen.runtime, "open_device", lambda *a, **k: pytest.fail("touched the device"))
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


def test_random_caches_repeat_a_pool_of_pages(monkeypatch):
    """A cache past POOL_VALUES repeats its random pages rather than quantizing every one."""
    monkeypatch.setattr(paged_bench, "POOL_VALUES", 16 * 8 * 128 * 3)
    x = paged_bench.make_batch(paged_bench.SMALL[1], seed=0)        # q8_0, 64 pages
    pages = x.k.values()
    assert x.k.num_blocks == 64 and np.array_equal(pages[3], pages[0]) and not np.array_equal(pages[1], pages[0])
    assert np.isfinite(pages).all() and np.abs(pages).mean() > 0.5            # random, not zeros
    assert sorted(x.table.ravel().tolist()) == list(range(64))      # every page read once, shuffled
