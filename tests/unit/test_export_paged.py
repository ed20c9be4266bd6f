"""`kgen export --paged`: paged entries in the JSON table and the C dispatcher, for an H100's caps
(no device). The entries are kgen's heuristic paged kernel for every (n_q, n_kv) bucket of the
folded rows; the C dispatcher, compiled with a context made by hand (c_engine/paged_offline.c),
plans random ragged batches to the kernel, split count, push constants, grids and scratch that
kgen's PagedPlan computes (tests/device/test_engine_c_paged.py runs the calls on lavapipe)."""
from __future__ import annotations

import ctypes
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kgen import abi, profiles
from kgen.cli import main
from kgen.identity import BuildIdentity, DeviceIdentity, kernel_digest
from kgen.paged import PagedKV, PagedShapes
from kgen.planning.choose import split_values
from kgen.planning.paged_plan import PagedPlan, _cache_layout, default_paged_variant, folded_shapes, paged_splits
from kgen.planning.recipe import recipe
from kgen.problem import NKV_BUCKETS, NQ_BUCKETS, ProblemClass, bucket
from kgen.quant import row_bytes
from kgen.space import default_variant
from kgen.tools import export as ex
from kgen.tunedb import Winner
from kgen.types import KV_TYPES
from kgen.variant import FEATURES, PathKind

CAPS = profiles.H100
DEVICE = DeviceIdentity.of(CAPS)
SPECS = ("128,128,f16,f16,16,causal", "64,64,q8_0,q4_0,32,softcap,sinks")
OFFLINE = Path(__file__).resolve().parents[1] / "device" / "c_engine" / "paged_offline.c"
FEATURE_BIT = {f: 1 << i for i, f in enumerate(FEATURES)}
KV_INDEX = {t.label: i for i, t in enumerate(KV_TYPES)}


def _dense():
    problem = ProblemClass(head_k=64, head_v=64, features=("causal",), nq_bucket=0, nkv_bucket=3)
    v = default_variant(problem, CAPS, PathKind.SCALAR)
    return [(DEVICE, BuildIdentity.current(), Winner(problem, v.uri, 1, 10.0, 0.1, kernel=kernel_digest(v.uri)))]


@pytest.fixture(scope="module")
def paged():
    return ex.paged_rows([ex.PagedSpec.parse(s) for s in SPECS], CAPS)


@pytest.fixture(scope="module")
def exported(paged, tmp_path_factory):
    out = tmp_path_factory.mktemp("paged")
    ex.export(_dense(), out / "c", "c", paged)
    ex.export(_dense(), out / "json", "json", paged)
    return out


def test_specs_parse_and_bad_ones_are_refused_by_name():
    spec = ex.PagedSpec.parse("128, 128, f16, q8_0, 64, sinks, causal")
    assert (spec.head_k, spec.head_v, spec.k_type.label, spec.v_type.label, spec.page, spec.features) == \
        (128, 128, "f16", "q8_0", 64, ("causal", "sinks"))
    assert spec.key == "128/128 f16/q8_0 pg64 causal+sinks"
    for text, says in (("128,128,f16,f16", "expected Dk,Dv,k_type,v_type,page"),
                       ("128,x,f16,f16,16", "Dk, Dv and page are integers"),
                       ("128,128,f17,f16,16", "f17"),
                       ("128,128,f16,f16,24", "page=24: must be a multiple of 16"),
                       ("128,128,f16,f16,16,mask", "not mask"),
                       ("128,128,f16,f16,16,causal,causal", "distinct")):
        with pytest.raises(ValueError, match="--paged") as info:
            ex.PagedSpec.parse(text)
        assert says in str(info.value), (text, str(info.value))
    with pytest.raises(ex.ExportError, match="head_k=130: kgen supports multiples of 8"):
        ex.paged_rows([ex.PagedSpec.parse("130,128,f16,f16,16")], CAPS)


def test_every_bucket_has_the_kernel_paged_plan_picks(paged):
    """Per spec and split-k, each (n_q, n_kv) bucket in exactly one row, whose kernel is
    default_paged_variant of the folded rows of a real batch in those buckets."""
    rng = np.random.default_rng(0)
    for text in SPECS:
        spec = ex.PagedSpec.parse(text)
        for split in (False, True):
            rows = [r for r in paged if r.spec == spec and r.variant.split_k == split]
            cells = [c for r in rows for c in r.buckets]
            assert sorted(cells) == [(i, j) for i in range(len(NQ_BUCKETS)) for j in range(len(NKV_BUCKETS))]
        for _ in range(30):
            gqa, hkv = int(rng.choice([1, 2, 4, 8])), int(rng.choice([1, 2, 8]))
            q_lens = tuple(int(x) for x in rng.integers(0, rng.choice([2, 40, 700]), size=int(rng.integers(1, 5))))
            q_lens = q_lens if max(q_lens) else (1,) + q_lens[1:]
            shapes = PagedShapes(batch=len(q_lens), total_q=sum(q_lens), heads_q=gqa * hkv, heads_kv=hkv,
                                 head_k=spec.head_k, head_v=spec.head_v, block_size=spec.page,
                                 max_blocks_per_seq=int(rng.integers(1, 700)), q_lens=q_lens, seq_lens=(0,) * len(q_lens))
            dense = folded_shapes(shapes, spec.k_type, spec.v_type, causal="causal" in spec.features, window=0,
                                  scale=None, softcap=1.0 if "softcap" in spec.features else 0.0,
                                  sinks="sinks" in spec.features, precision="f32")
            cell = (bucket(max(q_lens) * gqa, NQ_BUCKETS), bucket(shapes.max_blocks_per_seq * spec.page, NKV_BUCKETS))
            row = next(r for r in paged if r.spec == spec and not r.variant.split_k and cell in r.buckets)
            assert row.variant == default_paged_variant(dense, CAPS, spec.page), (text, cell)


def test_the_json_table_carries_the_paged_entries(exported, paged):
    table = json.loads((exported / "json" / "kgen_dispatch.json").read_text())
    assert table["version"] == ex.FORMAT_VERSION == 9
    assert len(table["entries"]) == 1 and table["paged_push"] == abi.PAGED_PUSH
    entries = table["paged_entries"]
    assert len(entries) == len(paged) and {e["spec"] for e in entries} == {ex.PagedSpec.parse(s).key for s in SPECS}
    assert any("Paged entries" in note and "target_workgroups" in note for note in table["notes"])
    for e, r in zip(entries, paged):
        assert e["source"] == "default" and e["device"] == DEVICE.key and e["variant"] == r.variant.uri
        assert e["splits_by"] == "work" and e["target_workgroups"] == 256 and e["min_split_tiles"] == 4
        assert e["page"] == r.spec.page and e["acc"] == 32 and e["buckets"] == [{"n_q": i, "n_kv": j} for i, j in r.buckets]
        steps = e["recipe"]["steps"]
        assert [s["role"] for s in steps] == (["fa", "reduce"] if e["split_k"] else ["fa"])
        assert e["recipe"]["output"] == ("reduced" if e["split_k"] else "out")
        for step in steps:
            assert {b: step["binds"][b] for b in abi.PAGED_BUFFERS} == {b: b for b in abi.PAGED_BUFFERS}
            assert (exported / "json" / step["spv"]).is_file()
        assert ("sinks" in step["binds"]) == ("sinks" in e["features"])


def test_the_dispatcher_compiles_as_c99_and_the_header_as_cxx11(exported, tmp_path):
    c = exported / "c"
    done = subprocess.run(["cc", "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-c", str(c / "kgen_fa.c"),
                           "-o", str(tmp_path / "kgen_fa.o")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cxx = subprocess.run(["c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-x", "c++",
                          str(c / "kgen_fa.h")], capture_output=True, text=True)
    assert cxx.returncode == 0, cxx.stderr
    symbols = subprocess.run(["nm", "-g", "--defined-only", str(tmp_path / "kgen_fa.o")], capture_output=True,
                             text=True).stdout
    assert "kgen_fa_paged_plan_call" in {line.split()[-1] for line in symbols.splitlines()}
    header = (c / "kgen_fa.h").read_text()
    assert "kgen_fa_buffer q, k, v, mask, sinks, o, scratch, state, block_table, seq_lens, cu_seqlens_q;" in header


def test_paged_entries_are_refused_where_the_format_has_no_place(paged, tmp_path, capsys):
    with pytest.raises(ex.ExportError, match="c-header format carries dense entries only"):
        ex.export(_dense(), tmp_path / "h", "c-header", paged)
    assert not (tmp_path / "h").exists()
    assert main(["export", "--format", "c", "-o", str(tmp_path / "x"), "--paged", "128,128,f16,f16,20"]) == 2
    assert "--paged '128,128,f16,f16,20': page=20" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def offline(exported, tmp_path_factory):
    if shutil.which("cc") is None:
        pytest.fail("no cc on PATH: scripts/bootstrap.sh installs one")
    lib = tmp_path_factory.mktemp("offline") / "liboffline.so"
    done = subprocess.run(["cc", "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I",
                           str(exported / "c"), "-I", str(OFFLINE.parent), str(OFFLINE), "-o", str(lib), "-lm",
                           "-lpthread"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    host = ctypes.CDLL(str(lib))
    host.kgen_offline_plan.argtypes = [ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_float),
                                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64,
                                       ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32),
                                       ctypes.POINTER(ctypes.c_uint64), ctypes.c_char_p, ctypes.c_size_t]
    return host


def _python_plan(shapes, k, v, *, causal, window, scale, softcap, sinks, split_k) -> PagedPlan:
    """PagedPlan's values for a batch on CAPS, without a device: its __init__'s choices from the
    same module functions, then its own dims() / _push()."""
    plan = object.__new__(PagedPlan)
    dense = folded_shapes(shapes, k.type, v.type, causal=causal, window=window, scale=scale, softcap=softcap,
                          sinks=sinks, precision="f32")
    variant = default_paged_variant(dense, CAPS, shapes.block_size)
    splits = split_k or paged_splits(variant, shapes, CAPS)
    plan.variant = variant.replace(split_k=splits > 1)
    plan.shapes, plan.k_layout, plan.v_layout = shapes, _cache_layout(k), _cache_layout(v)
    plan.window, plan.softcap, plan.sinks = window, softcap, sinks
    plan.scale = 1.0 / math.sqrt(shapes.head_k) if scale is None else scale
    plan.gqa, plan.max_q = shapes.heads_q // shapes.heads_kv, max(shapes.q_lens)
    plan.capacity = shapes.max_blocks_per_seq * shapes.block_size
    plan.split_kv, plan.splits = split_values(plan.capacity, splits, plan.variant.bc)
    plan.recipe = recipe(plan.variant)
    return plan


def _cache(t, num_blocks, page, heads, d, rng):
    """A cache of zeros in a random layout: NHD, HND, or NHD with padded rows and a leading offset."""
    kt = KV_TYPES[KV_INDEX[t]]
    how = rng.integers(3)
    if how < 2:
        layout = "NHD" if how == 0 else "HND"
        return PagedKV(bytes(num_blocks * page * heads * row_bytes(kt, d)), kt, num_blocks, page, heads, d, layout=layout)
    row = -(-d // kt.block_size) * kt.block_size + kt.block_size
    strides, offset = (page * heads * row, heads * row, row), 2 * kt.block_size
    size = row_bytes(kt, offset + num_blocks * strides[0])
    return PagedKV(bytes(size), kt, num_blocks, page, heads, d, strides=strides, offset=offset)


def test_the_c_plan_is_kgen_paged_plan_for_random_batches(offline):
    rng = np.random.default_rng(7)
    seen = {"split": 0, "one": 0, "forced": 0, "no lengths": 0}
    for trial in range(60):
        spec = ex.PagedSpec.parse(SPECS[trial % 2])
        gqa, hkv = int(rng.choice([1, 2, 4, 8])), int(rng.choice([1, 2, 8]))
        batch = int(rng.integers(1, 7))
        q_lens = [int(x) for x in rng.integers(0, int(rng.choice([2, 12, 300])), size=batch)]
        q_lens[int(rng.integers(batch))] = max(1, max(q_lens))
        max_blocks = int(rng.integers(1, int(rng.choice([8, 100, 600]))))
        capacity = max_blocks * spec.page
        seq_lens = [int(x) for x in rng.integers(0, capacity + 1, size=batch)]
        k = _cache(spec.k_type.label, int(rng.integers(1, 40)), spec.page, hkv, spec.head_k, rng)
        v = _cache(spec.v_type.label, k.num_blocks, spec.page, hkv, spec.head_v, rng)
        causal, sinks = "causal" in spec.features, "sinks" in spec.features
        window = int(rng.integers(1, 100)) if causal and rng.random() < 0.5 else 0
        softcap = float(rng.uniform(5, 50)) if "softcap" in spec.features else 0.0
        scale = float(rng.uniform(0.05, 0.2)) if rng.random() < 0.5 else None
        split_k = int(rng.integers(2, 9)) if rng.random() < 0.25 else None
        lengths = rng.random() < 0.8
        shapes = PagedShapes(batch=batch, total_q=sum(q_lens), heads_q=gqa * hkv, heads_kv=hkv, head_k=spec.head_k,
                             head_v=spec.head_v, block_size=spec.page, max_blocks_per_seq=max_blocks,
                             q_lens=tuple(q_lens), seq_lens=tuple(seq_lens))
        planned = shapes if lengths else PagedShapes(**{**shapes.__dict__, "q_lens": (max(q_lens),) * batch,
                                                        "seq_lens": (capacity,) * batch})
        plan = _python_plan(planned, k, v, causal=causal, window=window, scale=scale, softcap=softcap, sinks=sinks,
                            split_k=split_k)
        plan.shapes = shapes
        ints = [spec.head_k, spec.head_v, KV_INDEX[spec.k_type.label], KV_INDEX[spec.v_type.label], spec.page,
                sum(FEATURE_BIT[f] for f in spec.features), gqa * hkv, hkv, batch, max_blocks, k.num_blocks,
                sum(q_lens), max(q_lens), *k.strides, k.offset, *v.strides, v.offset, window, split_k or 0]
        q_arr, kv_arr = np.asarray(q_lens, np.int32), np.asarray(seq_lens, np.int32)
        push = (ctypes.c_uint32 * (abi.PUSH_BYTES // 4))()
        groups, scratch = (ctypes.c_uint32 * 12)(), (ctypes.c_uint64 * 4)()
        report = ctypes.create_string_buffer(512)
        status = offline.kgen_offline_plan((ctypes.c_uint32 * len(ints))(*ints),
                                           (ctypes.c_float * 2)(scale or 0.0, softcap),
                                           q_arr.ctypes.data if lengths else None, kv_arr.ctypes.data if lengths else None,
                                           CAPS.max_storage_buffer_range, push, groups, scratch, report, 512)
        label = f"trial {trial}: {shapes}, split_k={split_k}, lengths={lengths}"
        assert status == 0, f"{label}: {report.value.decode()}"
        variant, splits, steps, n_scratch = report.value.decode().split("|")
        assert (variant, int(splits)) == (plan.variant.uri, plan.splits), label
        assert bytes(push) == plan._push(), label
        dims = plan.dims()
        assert [tuple(groups[3 * i:3 * i + 3]) for i in range(int(steps))] == [s.groups(dims) for s in plan.recipe.steps]
        assert list(scratch[:int(n_scratch)]) == list(plan.recipe.sizes(dims).values()), label
        seen["forced" if split_k else "split" if plan.splits > 1 else "one"] += 1
        seen["no lengths"] += not lengths
    assert min(seen.values()) >= 3, seen   # each way of counting splits was compared
