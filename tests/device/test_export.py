"""`kgen export`: SPIR-V and dispatch table (JSON or one C header) from tuning winners. No device."""
import dataclasses
import hashlib
import json
import shutil
import struct
import subprocess

import numpy as np
import pytest

from kgen import abi, profiles
from kgen.tools import export as ex
from kgen.cli import main
from kgen.errors import CompileError
from kgen.identity import BuildIdentity, DeviceIdentity, kernel_digest
from kgen.planning.choose import split_values
from kgen.problem import ProblemClass
from kgen.render import reduce_groups
from kgen.space import default_variant, why_invalid
from kgen.variant import PathKind
from kgen.tunedb import Winner

CAPS = profiles.LAVAPIPE
DEVICE = DeviceIdentity.of(CAPS)


@pytest.fixture(scope="module")
def entries():
    """Three winners on lavapipe: a plain class, the same variant for a larger Nkv bucket, and a
    causal decode class with split-k (4 splits, so a reduce shader)."""
    build = BuildIdentity.current()
    plain = ProblemClass(head_k=64, head_v=64, nq_bucket=3, nkv_bucket=3, gqa_bucket=0)
    decode = ProblemClass(head_k=64, head_v=64, features=("causal",), nq_bucket=0, nkv_bucket=3)
    v1 = default_variant(plain, CAPS)
    v2 = default_variant(dataclasses.replace(decode, features=("causal", "split_k")), CAPS)
    assert v2.split_k and not v1.split_k
    k1, k2 = kernel_digest(v1.uri), kernel_digest(v2.uri)
    return [(DEVICE, build, Winner(plain, v1.uri, 1, median_us=100.0, spread_us=1.0, kernel=k1)),
            (DEVICE, build, Winner(dataclasses.replace(plain, nkv_bucket=4), v1.uri, 1, 300.0, 2.0, kernel=k1)),
            (DEVICE, build, Winner(decode, v2.uri, 4, median_us=50.0, spread_us=1.0, kernel=k2))]


def test_json_export_writes_spirv_and_the_dispatch_table(entries, tmp_path):
    out = tmp_path / "fa"
    written = ex.export(entries, out, "json")
    table = json.loads((out / "kgen_dispatch.json").read_text())
    assert set(written) == {out / "kgen_dispatch.json"} | {out / e["spv"] for e in table["entries"]} \
        | {out / e["twin"]["spv"] for e in table["entries"]} \
        | {out / e["reduce"]["spv"] for e in table["entries"] if e["reduce"]}
    assert len(list((out / "spirv").iterdir())) == 5   # two FA variants, their twins, one reduce: deduplicated
    assert table["format"] == ex.FORMAT_NAME and table["version"] == ex.FORMAT_VERSION
    assert table["build"]["key"] == BuildIdentity.current().key
    assert [d["key"] for d in table["devices"]] == [DEVICE.key]
    for e in table["entries"]:
        for shader in (e, e["reduce"]) if e["reduce"] else (e,):
            blob = (out / shader["spv"]).read_bytes()
            assert struct.unpack_from("<I", blob)[0] == 0x07230203
            assert hashlib.sha256(blob).hexdigest() == shader["sha256"] and len(blob) == shader["bytes"]

    by_class = {e["class"]: e for e in table["entries"]}
    assert set(by_class) == {w.problem.key for _, _, w in entries}
    decode = by_class["64/64 f16/f16 acc32 causal nq0 nkv3 gqa0"]
    assert decode["splits"] == 4 and decode["features"] == ["causal"] and decode["reduce"]
    assert decode["kernel"] == kernel_digest(decode["variant"]) != ""   # what its timing was taken with
    assert decode["n_kv"] == {"bucket": 3, "min": 4097, "max": 16384, "range": "4097-16384"}
    assert decode["n_q"]["max"] == 1 and decode["required_subgroup_size"] == CAPS.subgroup_size
    big = by_class["64/64 f16/f16 acc32 - nq3 nkv4 gqa0"]
    assert big["n_kv"]["max"] is None and big["reduce"] is None and big["sha256"] != decode["sha256"]
    assert table["notes"] and ex.eval_grid(big["grid"], {"n_q": 77, "n_head_q": 3, "n_batch": 2, "split_count": 1}) == (-(-77 // big["br"]), 3, 2)
    assert big["twin"]["shader"] == big["variant"].replace("_aligned", "") if big["aligned"] else \
        big["twin"]["shader"] == big["variant"] + "_aligned"
    assert [st["role"] for st in decode["recipe"]["steps"]] == ["fa", "reduce"] and decode["recipe"]["output"] == "reduced"


def test_json_layout_and_grid_follow_abi_and_the_kernel_contract(entries, tmp_path):
    ex.export(entries, tmp_path / "fa", "json")
    table = json.loads((tmp_path / "fa" / "kgen_dispatch.json").read_text())
    push = table["push_constants"]
    assert push["bytes"] == abi.PUSH_BYTES
    assert [(f["name"], f["offset"], f["type"]) for f in push["fields"]] == \
        [(f.name, 4 * i, f.glsl) for i, f in enumerate(abi.PUSH_FIELDS)]
    assert {b["name"]: b["binding"] for b in table["bindings"]} == abi.BINDING
    values = {"n_q": 77, "n_head_q": 8, "n_batch": 3, "split_count": 4}
    for e in table["entries"]:
        # templates/README.md: x = ceil(Nq / br), y = Hq, z = B * split_count; reduce: (Nq, Hq *
        # column chunks, B), as kgen's plans dispatch it.
        assert ex.eval_grid(e["grid"], values) == (-(-77 // e["br"]), 8, 12)
        if e["reduce"]:
            assert ex.eval_grid(e["reduce"]["grid"], values) == reduce_groups(77, 8, 3, e["head_v"])


C_PROGRAM = r"""
#include <stdio.h>
#include "kgen_fa_table.h"

static void show(const char *what, const kgen_fa_entry *e) {
    if (!e) { printf("%s NULL\n", what); return; }
    printf("%s %s splits=%u reduce=%u words=%u magic=%u\n", what, e->variant, (unsigned)e->splits,
           (unsigned)(e->reduce_spv != NULL), (unsigned)e->spv_words, (unsigned)(e->spv[0] == KGEN_FA_SPIRV_MAGIC));
}

int main(void) {
    kgen_fa_device dev = kgen_fa_entries[0].device;
    kgen_fa_push pc;
    uint32_t split_kv, split_count, groups[3];
    const kgen_fa_entry *e;
    printf("push %u %u\n", (unsigned)sizeof(kgen_fa_push), (unsigned)offsetof(kgen_fa_push, split_count));
    show("exact", kgen_fa_lookup(&dev, 64, 64, KGEN_FA_KV_F16, KGEN_FA_KV_F16, 0, 32, 0, 300, 8000, 1));
    show("exact_big", kgen_fa_lookup(&dev, 64, 64, KGEN_FA_KV_F16, KGEN_FA_KV_F16, 0, 32, 0, 300, 100000, 1));
    show("nearest", kgen_fa_lookup(&dev, 64, 64, KGEN_FA_KV_F16, KGEN_FA_KV_F16, 0, 32, 0, 300, 8000, 4));
    e = kgen_fa_lookup(&dev, 64, 64, KGEN_FA_KV_F16, KGEN_FA_KV_F16, KGEN_FA_FEATURE_CAUSAL, 32, 0, 1, 100000, 1);
    show("decode", e);
    show("unknown_head", kgen_fa_lookup(&dev, 96, 96, KGEN_FA_KV_F16, KGEN_FA_KV_F16, 0, 32, 0, 300, 3000, 1));
    show("unknown_type", kgen_fa_lookup(&dev, 64, 64, KGEN_FA_KV_Q8_0, KGEN_FA_KV_Q8_0, 0, 32, 0, 300, 3000, 1));
    dev.pipeline_cache_uuid[0] ^= 1;
    show("other_device", kgen_fa_lookup(&dev, 64, 64, KGEN_FA_KV_F16, KGEN_FA_KV_F16, 0, 32, 0, 300, 3000, 1));
    kgen_fa_splits(e, 1000, &split_kv, &split_count);
    pc.n_q = 1; pc.n_head_q = 8; pc.n_batch = 2; pc.split_count = split_count;
    kgen_fa_groups(e, &pc, groups);
    printf("splits %u %u groups %u %u %u\n", (unsigned)split_kv, (unsigned)split_count,
           (unsigned)groups[0], (unsigned)groups[1], (unsigned)groups[2]);
    kgen_fa_reduce_groups(e, &pc, groups);
    printf("reduce_groups %u %u %u\n", (unsigned)groups[0], (unsigned)groups[1], (unsigned)groups[2]);
    return 0;
}
"""


@pytest.fixture(scope="module")
def header(entries, tmp_path_factory):
    out = tmp_path_factory.mktemp("hdr") / "include"
    assert ex.export(entries, out, "c-header") == [out / "kgen_fa_table.h"]
    return out


@pytest.mark.parametrize("compiler, flags, source", [
    ("cc", ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"], "main.c"),
    ("c++", ["-std=c++17", "-Wall", "-Wextra", "-Werror"], "main.cpp"),
])
def test_c_header_compiles_and_looks_up(entries, header, tmp_path, compiler, flags, source):
    if shutil.which(compiler) is None:
        pytest.fail(f"no {compiler} on PATH: scripts/bootstrap.sh installs one")
    (tmp_path / source).write_text(C_PROGRAM)
    exe = tmp_path / "lookup"
    build = subprocess.run([compiler, *flags, "-I", str(header), str(tmp_path / source), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    lines = dict(line.split(" ", 1) for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                                  check=True).stdout.splitlines())
    (_, _, plain), (_, _, big), (_, _, decode) = entries
    words = len(ex.collect(entries[:1])[0].shader.spirv) // 4
    assert lines["push"] == f"{abi.PUSH_BYTES} {4 * [f.name for f in abi.PUSH_FIELDS].index('split_count')}"
    assert lines["exact"] == f"{plain.variant} splits=1 reduce=0 words={words} magic=1"
    assert lines["exact_big"].startswith(f"{big.variant} splits=1")          # nkv bucket 4
    assert lines["nearest"].startswith(f"{plain.variant} splits=1")          # gqa bucket 2 away; the nkv4 entry is 3 away
    assert lines["decode"].startswith(f"{decode.variant} splits=4 reduce=1")  # nkv 100000: nearest bucket
    assert lines["unknown_head"] == lines["unknown_type"] == lines["other_device"] == "NULL"
    bc = int(decode.variant.split("_bc")[1].split("_")[0])
    split_kv, split_count = split_values(1000, 4, bc)   # what kgen's plans push
    assert lines["splits"] == f"{split_kv} {split_count} groups 1 8 {2 * split_count}"
    assert lines["reduce_groups"] == " ".join(map(str, reduce_groups(1, 8, 2, decode.problem.head_v)))


def test_a_failed_export_leaves_nothing(entries, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise CompileError("fa_reduce_v64", "simulated failure")
    from kgen.planning import recipe
    monkeypatch.setattr(recipe, "_compiled", broken)   # every shader of a recipe compiles through it
    for fmt in ex.FORMATS:
        with pytest.raises(CompileError):
            ex.export(entries, tmp_path / "fa", fmt)
    assert list(tmp_path.iterdir()) == []   # neither the folder nor a temporary one


def test_a_failure_after_some_files_were_written_leaves_the_old_output(entries, tmp_path, monkeypatch):
    out = tmp_path / "fa"
    ex.export(entries[:1], out, "json")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(rows):
        raise RuntimeError("simulated failure after the .spv files")
    monkeypatch.setattr(ex, "dispatch_table", broken)
    with pytest.raises(RuntimeError):
        ex.export(entries, out, "json")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["fa"]


def test_export_refuses_no_winners_and_inconsistent_ones(entries, tmp_path):
    with pytest.raises(ex.ExportError, match="kgen tune"):
        ex.export([], tmp_path / "fa", "json")
    device, build, w = entries[2]
    with pytest.raises(ex.ExportError, match="exactly for split_k variants"):   # split-k variant with 1 split
        ex.export([(device, build, dataclasses.replace(w, splits=1))], tmp_path / "fa", "json")
    assert not (tmp_path / "fa").exists()


class FakeDB:
    """Stands in for kgen.tunedb.TuningDB (its contract: winners(device, build), close())."""
    stored: list = []
    calls: list = []

    def __init__(self, path):
        self.path = path

    def winners(self, device=None, build=None):
        FakeDB.calls.append((device, build))
        return [e for e in FakeDB.stored if build is None or e[1] == build]

    def close(self):
        pass


def test_cli_exports_the_current_builds_winners(entries, tmp_path, monkeypatch, capsys):
    import kgen.tunedb
    monkeypatch.setattr(kgen.tunedb, "TuningDB", FakeDB)
    db = tmp_path / "tuning.sqlite"
    db.write_bytes(b"")
    # A fourth winner timed with a kernel source its variant no longer renders: left out, said so.
    device, build, w = entries[0]
    changed = (device, build, dataclasses.replace(w, problem=dataclasses.replace(w.problem, nkv_bucket=2),
                                                  kernel="0" * 16))
    monkeypatch.setattr(FakeDB, "stored", [*entries, changed])
    monkeypatch.setattr(FakeDB, "calls", [])
    assert main(["export", "--format", "c-header", "-o", str(tmp_path / "h"), "--db", str(db)]) == 0
    assert FakeDB.calls == [(None, BuildIdentity.current())]
    out, err = capsys.readouterr()
    assert (tmp_path / "h" / "kgen_fa_table.h").is_file() and "3 entries" in out
    assert "left out 1 winner(s) whose kernels changed" in err
    # Both formats can share a folder.
    assert main(["export", "--format", "json", "-o", str(tmp_path / "h"), "--db", str(db),
                 "--device-key", DEVICE.key]) == 0
    assert {p.name for p in (tmp_path / "h").iterdir()} == {"kgen_fa_table.h", "kgen_dispatch.json", "spirv"}

    assert main(["export", "--format", "json", "-o", str(tmp_path / "x"), "--db", str(db),
                 "--device-key", "0123456789abcdef"]) == 2
    assert DEVICE.key in capsys.readouterr().err
    monkeypatch.setattr(FakeDB, "stored", [])
    assert main(["export", "--format", "json", "-o", str(tmp_path / "x"), "--db", str(db)]) == 2
    assert "run `kgen tune` first" in capsys.readouterr().err
    assert main(["export", "--format", "json", "-o", str(tmp_path / "x"), "--db", str(tmp_path / "none")]) == 2
    assert "no tuning DB" in capsys.readouterr().err and not (tmp_path / "x").exists()


PASS_URIS = [
    # osplit (P2's winner's form): the mask and Q in fragment order
    "fa_cm1_k576_v512_f16f16_acc32_br64_bc32_wg256_sg32_regs1_osplit_vink_m16n8k16_mask_aligned",
    # regs on a q8_0 cache (P5's): K and V to f16, the mask in fragment order
    "fa_cm1_k128_v128_q8_0q8_0_acc32_br128_bc64_wg256_sg32_regs1_kvf16_m16n8k16_mask_aligned",
    # coopmat2: K and V to f16, the mask's tiles classified
    "fa_cm2_k128_v128_q8_0q8_0_acc32_br64_bc32_wg128_sg32_kvf16_mtiles_mask",
]


def _winner_for(uri: str, splits: int = 1) -> Winner:
    from kgen.variant import Variant
    v = Variant.parse(uri)
    problem = ProblemClass(head_k=v.head_k, head_v=v.head_v, k_type=v.k_type, v_type=v.v_type,
                           features=tuple(f for f in v.features if f != "split_k"), v_in_k=v.v_in_k)
    return Winner(problem, uri, splits, median_us=10.0, spread_us=1.0)


@pytest.mark.parametrize("uri", PASS_URIS)
def test_passes_before_the_kernel_are_exported(uri, tmp_path):
    """Each pass a plan runs before the kernel is in the entry, in the plan's order, with its
    SPIR-V, bindings, push source and formulas, which give the plan's own grids and sizes."""
    from kgen.extent import evaluate
    from kgen.passes import kernel_push, passes_before
    from kgen.variant import Variant
    v = Variant.parse(uri)
    ex.export([(DEVICE, BuildIdentity.current(), _winner_for(uri))], tmp_path / "fa", "json")
    table = json.loads((tmp_path / "fa" / "kgen_dispatch.json").read_text())
    (e,) = table["entries"]
    from kgen.planning.recipe import recipe
    want = passes_before(v)
    steps = [st for st in recipe(v).steps if st.role == "before"]   # how a plan runs them
    assert [p["shader"] for p in e["passes_before"]] == [p.name for p in want] == [st.name for st in steps] and want
    for p, w, step in zip(e["passes_before"], want, steps):
        spv = (tmp_path / "fa" / p["spv"]).read_bytes()
        assert hashlib.sha256(spv).hexdigest() == p["sha256"] and len(spv) == p["bytes"]
        assert (p["reads"], p["writes"], p["buffer"], p["kernel_binding"]) == (w.reads, w.writes, w.buffer, w.kernel_binding)
        assert p["push"] == ("caller" if w.caller_push else "kernel")
        assert {p["reads"], p["writes"], p["kernel_binding"]} <= {b["name"] for b in table["bindings"]}
        for dims in ({"n_q": 512, "n_kv": 16384, "n_head_q": 16, "n_head_kv": 1, "n_batch": 1, "mask_rows": 512,
                      "mask_planes": 1},
                     {"n_q": 37, "n_kv": 1000, "n_head_q": 8, "n_head_kv": 2, "n_batch": 3, "mask_rows": 1,
                      "mask_planes": 3}):
            assert tuple(evaluate(p["grid"][a]["expr"], dims) for a in "xyz") == step.groups(dims)
            assert evaluate(p["buffer_bytes"]["expr"], dims) == evaluate(w.nbytes, dims) > 0
    assert set(e["kernel_push"]) == set(kernel_push(v))
    assert bool(e["kernel_push"]) == v.kv_f16
    names = {f["name"] for f in table["push_constants"]["fields"]}
    assert set(e["kernel_push"]) <= names and set(table["dims"]) >= {"n_head_kv", "mask_rows", "mask_planes"}


PASS_PROGRAM = r"""
#include <stdio.h>
#include <string.h>
#include "kgen_fa_table.h"

int main(void) {
    unsigned i, j;
    for (i = 0; i < KGEN_FA_ENTRY_COUNT; ++i) {
        const kgen_fa_entry *e = &kgen_fa_entries[i];
        kgen_fa_push pc;
        kgen_fa_dims d;
        memset(&pc, 0, sizeof pc);
        memset(&d, 0, sizeof d);
        pc.n_q = 37; pc.n_kv = 1000; pc.n_head_q = 8; pc.gqa_ratio = 4; pc.n_batch = 3;
        pc.k_stride_row = 160; pc.k_offset = 32;
        d.n_head_kv = 2; d.mask_rows = 37; d.mask_planes = 3;
        for (j = 0; j < e->pass_count; ++j) {
            const kgen_fa_pass *p = &e->passes[j];
            uint32_t g[3];
            p->groups(&pc, &d, g);
            printf("%s %s %u %u %u %u %u %u %u %u %llu %u\n", e->variant, p->name, (unsigned)p->reads,
                   (unsigned)p->writes, (unsigned)p->kernel_binding, (unsigned)p->caller_push, (unsigned)g[0],
                   (unsigned)g[1], (unsigned)g[2], (unsigned)p->local_size_x,
                   (unsigned long long)p->buffer_bytes(&pc, &d), (unsigned)(p->spv[0] == KGEN_FA_SPIRV_MAGIC));
        }
        if (e->kernel_push != NULL) e->kernel_push(&d, &pc);
        printf("%s push %u %u %u\n", e->variant, (unsigned)pc.k_stride_row, (unsigned)pc.k_stride_batch,
               (unsigned)pc.k_offset);
    }
    return 0;
}
"""


@pytest.mark.parametrize("compiler, flags, source", [
    ("cc", ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror"], "main.c"),
    ("c++", ["-std=c++17", "-Wall", "-Wextra", "-Werror"], "main.cpp"),
])
def test_c_header_carries_the_passes_before_the_kernel(tmp_path, compiler, flags, source):
    """The header's pass table and formulas, compiled and called from C, give what the plan's
    own description gives; kernel_push rewrites the K layout of a kv_f16 entry only."""
    if shutil.which(compiler) is None:
        pytest.fail(f"no {compiler} on PATH: scripts/bootstrap.sh installs one")
    from kgen.extent import evaluate
    from kgen.passes import kernel_push, passes_before
    from kgen.variant import Variant
    ex.export([(DEVICE, BuildIdentity.current(), _winner_for(u)) for u in PASS_URIS], tmp_path / "h", "c-header")
    (tmp_path / source).write_text(PASS_PROGRAM)
    build = subprocess.run([compiler, *flags, "-I", str(tmp_path / "h"), str(tmp_path / source), "-o", str(tmp_path / "p")],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    got = subprocess.run([str(tmp_path / "p")], capture_output=True, text=True, check=True).stdout.splitlines()
    dims = {"n_q": 37, "n_kv": 1000, "n_head_q": 8, "gqa_ratio": 4, "n_batch": 3, "n_head_kv": 2, "mask_rows": 37,
            "mask_planes": 3}
    from kgen.planning.recipe import recipe
    want = []
    for uri in sorted(PASS_URIS, key=lambda u: _winner_for(u).problem.key):
        v = Variant.parse(uri)
        steps = [st for st in recipe(v).steps if st.role == "before"]
        for p, step in zip(passes_before(v), steps, strict=True):
            g = step.groups(dims)
            want.append(f"{uri} {p.name} {abi.BINDING[p.reads]} {abi.BINDING[p.writes]} {abi.BINDING[p.kernel_binding]} "
                        f"{int(p.caller_push)} {g[0]} {g[1]} {g[2]} {p.local_size_x} {evaluate(p.nbytes, dims)} 1")
        push = {"k_stride_row": 160, "k_stride_batch": 0, "k_offset": 32}
        push |= {name: evaluate(e, dims) for name, e in kernel_push(v).items() if name in push}
        want.append(f"{uri} push {push['k_stride_row']} {push['k_stride_batch']} {push['k_offset']}")
    assert got == want


FUSED_PROGRAM = r"""
#include <stdio.h>
#include "kgen_fa_table.h"

int main(void) {
    const kgen_fa_entry *e = &kgen_fa_entries[0];
    printf("%s fused=%u reduce=%u splits=%u\n", e->variant, (unsigned)e->fused_reduce,
           (unsigned)(e->reduce_spv != NULL), (unsigned)e->splits);
    return 0;
}
"""


def test_fused_reduce_winners_export_without_a_reduce_pass(tmp_path, capsys):
    """A fused_reduce winner (P3's on the H100) is exported with its flag and no reduce shader;
    the notes say what to bind instead, and the header carries the flag."""
    decode = ProblemClass(head_k=64, head_v=64, features=("causal",), nq_bucket=0, nkv_bucket=3)
    v = default_variant(dataclasses.replace(decode, features=("causal", "split_k")), CAPS).replace(fused_reduce=True)
    winner = Winner(decode, v.uri, 4, median_us=40.0, spread_us=1.0)
    entries = [(DEVICE, BuildIdentity.current(), winner)]
    ex.export(entries, tmp_path / "fa", "json")
    table = json.loads((tmp_path / "fa" / "kgen_dispatch.json").read_text())
    (e,) = table["entries"]
    assert e["fused_reduce"] is True and e["reduce"] is None and e["splits"] == 4
    twin = v.replace(aligned=not v.aligned)
    assert sorted(p.name for p in (tmp_path / "fa" / "spirv").iterdir()) == sorted([f"{v.uri}.spv", f"{twin.uri}.spv"])
    assert any("split_arrivals" in note and "Zero" in note for note in table["notes"])
    ex.export(entries, tmp_path / "h", "c-header")
    if shutil.which("cc") is not None:
        (tmp_path / "main.c").write_text(FUSED_PROGRAM)
        build = subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", "-I", str(tmp_path / "h"),
                                str(tmp_path / "main.c"), "-o", str(tmp_path / "fused")], capture_output=True, text=True)
        assert build.returncode == 0, build.stderr
        out = subprocess.run([str(tmp_path / "fused")], capture_output=True, text=True, check=True).stdout
        assert out == f"{v.uri} fused=1 reduce=0 splits=4\n"
    # More (row, split) pairs than its combine holds: that row is left out and reported, the
    # others are exported; with no other row, refused by name before anything is written.
    too_many = dataclasses.replace(winner, problem=dataclasses.replace(decode, nkv_bucket=4),
                                   splits=ex.FUSED_STATS_SLOTS // v.br + 1)
    ex.export(entries + [(DEVICE, BuildIdentity.current(), too_many)], tmp_path / "both", "json")
    kept = json.loads((tmp_path / "both" / "kgen_dispatch.json").read_text())["entries"]
    assert [k["splits"] for k in kept] == [4]
    assert "left out class " + too_many.problem.key in capsys.readouterr().err
    with pytest.raises(ex.ExportError, match="at most 256"):
        ex.export([(DEVICE, BuildIdentity.current(), too_many)], tmp_path / "x", "json")
    assert not (tmp_path / "x").exists()


@dataclasses.dataclass
class Cache:
    """A K or V cache as an engine stores it: raw bytes of `type` with strides (row, head,
    batch) and offset in elements."""
    raw: bytes
    type: str
    strides: tuple[int, int, int]
    offset: int = 0


def _cache(x: np.ndarray, t: str, pad_blocks: int = 0, lead_blocks: int = 0) -> Cache:
    """x (B, H, N, D) stored as `t`, each row padded by `pad_blocks` blocks and the whole
    preceded by `lead_blocks` blocks of garbage (the offset): a layout unlike a dense copy's."""
    from kgen.kvtensor import KVTensor
    from kgen.types import KvType
    kt = KvType.parse(t)
    b, h, n, d = x.shape
    pad = pad_blocks * kt.block_size
    wide = np.concatenate([x, np.full((b, h, n, pad), 7.0)], axis=-1) if pad else x
    raw = KVTensor.from_array(wide, kt).raw
    row = d + pad
    return Cache(b"\x11" * kt.block_bytes * lead_blocks + raw, t, (row, row * n, row * n * h),
                 kt.block_size * lead_blocks)


def _run_as_the_table_says(table: dict, spirv_dir, e: dict, q, k: Cache, v: Cache, *, shape, mask=None):
    """Dispatch one exported entry the way its notes tell an engine to (no kgen planning): the
    split values from the table's formulas, the push constants from its fields (and the entry's
    kernel_push), the kernel twin for this Nkv, then the entry's recipe step by step (bindings,
    scratch sizes, grids, barriers); twice, to see that a fused entry leaves its arrival counts
    zero. v is the same Cache object as k when V is read inside K's rows. Returns the result
    rows and the arrival counts after the second run."""
    from kgen.extent import evaluate
    from kgen.runtime import open_device
    dev = open_device()
    b, hq, hkv, nq, nkv, dk, dv = shape
    entry_values = {"bc": e["bc"], "br": e["br"], "splits": e["splits"], "n_kv": nkv}
    split_kv = evaluate(table["split_values"]["split_kv"]["expr"], entry_values)
    split_count = evaluate(table["split_values"]["split_count"]["expr"], entry_values | {"split_kv": split_kv})
    mask_b, mask_h, mask_rows = (1, 1, 1) if mask is None else mask.shape[:3]
    push = {f["name"]: 0 for f in table["push_constants"]["fields"]} | dict(
        n_q=nq, n_kv=nkv, n_head_q=hq, gqa_ratio=hq // hkv, n_batch=b,
        q_stride_row=dk, q_stride_head=nq * dk, q_stride_batch=hq * nq * dk,
        k_stride_row=k.strides[0], k_stride_head=k.strides[1], k_stride_batch=k.strides[2], k_offset=k.offset,
        v_stride_row=v.strides[0], v_stride_head=v.strides[1], v_stride_batch=v.strides[2], v_offset=v.offset,
        mask_stride_row=nkv if mask_rows > 1 else 0, mask_stride_head=mask_rows * nkv if mask_h > 1 else 0,
        mask_stride_batch=mask_h * mask_rows * nkv if mask_b > 1 else 0,
        scale=1.0 / np.sqrt(dk), split_kv=split_kv, split_count=split_count,
        o_stride_row=dv, o_stride_head=nq * dv, o_stride_batch=hq * nq * dv)
    dims = {name: value for name, value in push.items() if isinstance(value, int)} | dict(
        n_head_kv=hkv, mask_rows=mask_rows, mask_planes=mask_b * mask_h)
    pushes = {"caller": push, "kernel": push | {name: evaluate(f["expr"], dims) for name, f in e["kernel_push"].items()}}
    rows = b * hq * nq
    recipe = e["recipe"]
    data = {"q": q.astype(np.float32), "k": np.frombuffer(k.raw, np.uint8), "v": np.frombuffer(v.raw, np.uint8),
            "mask": np.zeros(4, np.uint32) if mask is None else mask.astype(np.float16), "sinks": np.zeros(4, np.uint32),
            "o": np.zeros(rows * dv, np.float32)}
    data |= {sc["name"]: np.zeros(evaluate(sc["bytes"]["expr"], dims), np.uint8) for sc in recipe["scratch"]}
    bufs = {name: dev.buffer(max(16, x.nbytes)) for name, x in data.items()}
    if v is k:
        bufs["v"] = bufs["k"]   # V inside K's rows: the engine binds K's buffer for both
    kernel = e if (nkv % e["bc"] == 0) == e["aligned"] else e["twin"]
    kernels = []
    try:
        for name, x in data.items():
            bufs[name].write(np.ascontiguousarray(x))
        steps = []
        for i, st in enumerate(recipe["steps"]):
            shader = kernel if st["role"] == "fa" else st
            pipeline = dev.pipeline((spirv_dir / shader["spv"]).read_bytes(), name=shader["shader"],
                                    required_subgroup_size=st["required_subgroup_size"])
            kernels.append(pipeline)
            binds = {abi.BINDING[binding]: bufs[name] for binding, name in st["binds"].items()}
            steps.append((pipeline, binds, abi.pack(**pushes[st["push"]]), ex.eval_grid(st["grid"], dims),
                          i > 0 and not st["barrier"]))
        with dev.sequence(steps, timed=False) as seq:
            seq.run(wait=True)
            bufs["o"].write(np.full(rows * dv, np.nan, np.float32))
            seq.run(wait=True)
        result = np.frombuffer(bufs["o"].read(rows * dv * 4), np.float32).reshape(b, hq, nq, dv)
        arrivals = np.frombuffer(bufs["split_arrivals"].read(rows * 4), np.uint32) if "split_arrivals" in bufs \
            else np.zeros(rows, np.uint32)
        return result, arrivals
    finally:
        for pipeline in kernels:
            dev.drop_pipeline(pipeline)
        for name, buf in bufs.items():
            if not (name == "v" and v is k):
                buf.close()


@pytest.mark.parametrize("fused", [False, True])
def test_an_engine_following_the_table_gets_the_reference_result(tmp_path, fused):
    """The exported split-k decode winner, with a reduce pass or fused, run from the JSON alone
    as an engine would: right to NMSE 5e-4 against the float64 reference, and a fused entry
    leaves its arrival counts zero."""
    from kgen import reference
    from kgen.runtime import open_device
    caps = open_device().caps  # the device the test runs on: its default variant, its identity
    decode = ProblemClass(head_k=64, head_v=64, features=("causal",), nq_bucket=0, nkv_bucket=3)
    # The scalar path: it has both forms of split-k on every device (coopmat1 has no fused reduce).
    v = default_variant(dataclasses.replace(decode, features=("causal", "split_k")), caps, PathKind.SCALAR)
    v = v.replace(fused_reduce=fused)
    assert why_invalid(v, caps) is None
    ex.export([(DeviceIdentity.of(caps), BuildIdentity.current(), Winner(decode, v.uri, 4, 40.0, 1.0))],
              tmp_path / "fa", "json")
    table = json.loads((tmp_path / "fa" / "kgen_dispatch.json").read_text())
    (e,) = table["entries"]
    assert bool(e["reduce"]) != fused and e["fused_reduce"] == fused
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 4, 1, 64))
    k = rng.standard_normal((1, 2, 300, 64)).astype(np.float16).astype(np.float64)
    vv = rng.standard_normal((1, 2, 300, 64)).astype(np.float16).astype(np.float64)
    out, arrivals = _run_as_the_table_says(table, tmp_path / "fa", e, q, _cache(k, "f16"), _cache(vv, "f16"),
                                           shape=(1, 4, 2, 1, 300, 64, 64))
    ref = reference.attention(q, k, vv, causal=True)
    assert np.isfinite(out).all() and reference.nmse(out, ref) <= 5e-4
    assert not arrivals.any()


def _pass_cases():
    """(id, uri or None, shape (B, Hq, Hkv, Nq, Nkv, Dk, Dv), cache type): the scalar path's
    kv_f16 variant runs on every device (lavapipe too); the matrix ones where the device has
    their extension."""
    return [("scalar-kvf16", None, (2, 4, 2, 33, 200, 64, 64), "q8_0"),
            ("osplit", PASS_URIS[0], (1, 4, 1, 40, 256, 576, 512), "f16"),
            ("regs-kvf16", PASS_URIS[1], (1, 4, 2, 70, 256, 128, 128), "q8_0"),
            ("cm2-kvf16-mtiles", PASS_URIS[2], (1, 4, 2, 70, 200, 128, 128), "q8_0")]


@pytest.mark.parametrize("case", _pass_cases(), ids=[c[0] for c in _pass_cases()])
def test_an_engine_runs_the_passes_before_the_kernel_as_the_table_says(tmp_path, case):
    """An entry with passes before the kernel (K/V to f16 on a padded, offset cache; the mask and
    Q in fragment order; mask tiles), run from the JSON alone: right to NMSE 5e-4 against the
    float64 reference. Where the device lacks the variant's matrix extension, the plan's rules
    name it (the scalar case still runs its passes here)."""
    from kgen import quant, reference
    from kgen.runtime import open_device
    from kgen.variant import Variant
    name, uri, shape, cache_type = case
    caps = open_device().caps
    b, hq, hkv, nq, nkv, dk, dv = shape
    if uri is None:
        problem = ProblemClass(head_k=dk, head_v=dv, k_type=cache_type, v_type=cache_type, features=("mask",),
                               nq_bucket=2, nkv_bucket=0)
        v = default_variant(problem, caps, PathKind.SCALAR).replace(kv_f16=True, aligned=False)
    else:
        v = Variant.parse(uri)
    reason = why_invalid(v, caps)
    if reason is not None:
        assert uri is not None and "cooperative" in reason.lower(), reason
        return
    v_in_k = v.v_in_k
    winner = _winner_for(v.uri)
    ex.export([(DeviceIdentity.of(caps), BuildIdentity.current(), winner)], tmp_path / "fa", "json")
    table = json.loads((tmp_path / "fa" / "kgen_dispatch.json").read_text())
    (e,) = table["entries"]
    assert e["passes_before"]
    rng = np.random.default_rng(len(name))
    q = rng.standard_normal((b, hq, nq, dk))
    k = rng.standard_normal((b, hkv, nkv, dk))
    mask = rng.standard_normal((1, 1, nq, nkv))
    mask[..., 5:40] = -np.inf
    quantized = cache_type != "f16"
    k_cache = _cache(k, cache_type, pad_blocks=int(quantized), lead_blocks=int(quantized))
    if v_in_k:
        vv, v_cache = k[..., :dv], k_cache
    else:
        vv = rng.standard_normal((b, hkv, nkv, dv))
        v_cache = _cache(vv, cache_type, pad_blocks=int(quantized), lead_blocks=2 * int(quantized))
    out, _ = _run_as_the_table_says(table, tmp_path / "fa", e, q, k_cache, v_cache,
                                    shape=shape, mask=mask.astype(np.float16))
    ref = reference.attention(q, quant.roundtrip(k, cache_type), quant.roundtrip(vv, cache_type),
                              mask=mask.astype(np.float16).astype(np.float64))
    assert np.isfinite(out).all()
    assert reference.nmse(out, ref) <= 5e-4, reference.nmse(out, ref)
