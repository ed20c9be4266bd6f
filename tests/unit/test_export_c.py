"""`kgen export --format c`: a dispatcher that compiles as C99 (pedantic, every warning an error)
and whose header compiles as C++11, depending on the Vulkan headers only; its table follows the
recipes of the winners it was written from. No device (tests/device/test_engine_c.py runs it)."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import pytest

from kgen import abi, profiles
from kgen.identity import BuildIdentity, DeviceIdentity, kernel_digest
from kgen.planning.recipe import recipe
from kgen.problem import ProblemClass
from kgen.space import default_variant
from kgen.tools import export as ex
from kgen.tunedb import Winner
from kgen.variant import PathKind, Variant

CAPS = profiles.H100
DEVICE = DeviceIdentity.of(CAPS)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """H100 winners of every path, with split-k, a fused reduce and passes before the kernel."""
    build = BuildIdentity.current()
    classes = [
        (ProblemClass(head_k=128, head_v=128, features=("mask",), nq_bucket=4, nkv_bucket=2), PathKind.COOPMAT2, 1, {}),
        (ProblemClass(head_k=64, head_v=64, features=("causal",), nq_bucket=0, nkv_bucket=3), PathKind.SCALAR, 4,
         {"fused_reduce": True}),
        (ProblemClass(head_k=128, head_v=128, k_type="q8_0", v_type="q8_0", features=("mask",), nq_bucket=3,
                      nkv_bucket=2), PathKind.COOPMAT1, 1, {"kv_f16": True}),
        (ProblemClass(head_k=128, head_v=128, nq_bucket=0, nkv_bucket=4), PathKind.COOPMAT1, 8, {}),
    ]
    winners = []
    for problem, path, splits, knobs in classes:
        features = problem.features + (("split_k",) if splits > 1 else ())
        v = default_variant(dataclasses.replace(problem, features=features), CAPS, path).replace(**knobs)
        winners.append(Winner(problem, v.uri, splits, 10.0, 0.1, kernel=kernel_digest(v.uri)))
    out = tmp_path_factory.mktemp("c") / "fa"
    written = ex.export([(DEVICE, build, w) for w in winners], out, "c")
    return out, written, winners


def test_writes_the_header_and_the_source(exported):
    out, written, _ = exported
    assert written == [out / "kgen_fa.h", out / "kgen_fa.c"]
    header = (out / "kgen_fa.h").read_text()
    assert f"#define KGEN_FA_FORMAT_VERSION {ex.FORMAT_VERSION}" in header
    assert "#include <vulkan/vulkan.h>" in header


def test_compiles_as_c99_and_the_header_as_cxx11(exported, tmp_path):
    out, _, _ = exported
    for tool in ("cc", "c++"):
        if shutil.which(tool) is None:
            pytest.fail(f"no {tool} on PATH: scripts/bootstrap.sh installs one")
    c = subprocess.run(["cc", "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-c", str(out / "kgen_fa.c"),
                        "-o", str(tmp_path / "kgen_fa.o")], capture_output=True, text=True)
    assert c.returncode == 0, c.stderr
    cxx = subprocess.run(["c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-x", "c++",
                          str(out / "kgen_fa.h")], capture_output=True, text=True)
    assert cxx.returncode == 0, cxx.stderr
    symbols = subprocess.run(["nm", "-g", "--defined-only", str(tmp_path / "kgen_fa.o")], capture_output=True,
                             text=True).stdout
    exported_names = sorted(line.split()[-1] for line in symbols.splitlines())
    assert exported_names == sorted(["kgen_fa_context_create", "kgen_fa_context_destroy", "kgen_fa_context_recycle",
                                     "kgen_fa_context_device_name", "kgen_fa_plan_call", "kgen_fa_paged_plan_call", "kgen_fa_record",
                                     "kgen_fa_status_name"])   # everything else is static


def test_each_entry_follows_its_recipe(exported):
    """Steps in recipe order with their bindings (the caller's O at the recipe's output binding)
    and barriers; the scratch buffers with the recipe's size formulas; the kernel twins."""
    out, _, winners = exported
    source = (out / "kgen_fa.c").read_text()
    for i, w in enumerate(sorted(winners, key=lambda w: w.problem.key)):   # the table's order
        v = Variant.parse(w.variant)
        r = recipe(v)
        grids = re.findall(rf"static void kgen_fa_e{i}_s(\d+)_grid_", source)
        assert [int(g) for g in grids] == list(range(len(r.steps)))
        entry = source[source.index(f'"{w.problem.key}", "{v.uri}", "{v.replace(aligned=not v.aligned).uri}"'):]
        entry = entry[:entry.index("\n    { ")] if i < len(winners) - 1 else entry
        for step in r.steps:   # the FA step's shader is named by the variant (kv_f16 in it)
            assert f"/* {step.role}: {v.uri if step.role == 'fa' else step.name} */" in entry
        buffers = list(ex.CALLER_BUFFERS) + [b.name for b in r.scratch]
        rows = re.findall(r"\{ ((?:\d+u|KGEN_FA_UNBOUND_)(?:, (?:\d+u|KGEN_FA_UNBOUND_)){%d}) \}" % (len(abi.BINDINGS) - 1), entry)
        assert len(rows) == len(r.steps)
        for step, row in zip(r.steps, rows):
            bound = {b.name: buffers[int(x[:-1])] for b, x in zip(abi.BINDINGS, row.split(", ")) if x != "KGEN_FA_UNBOUND_"}
            assert bound == dict(step.binds), step.name
        assert (r.output, "o") in r.fa.binds or (r.output, "o") in r.steps[-1].binds
        assert len(re.findall(rf"static uint64_t kgen_fa_e{i}_b\d+_bytes_", source)) == len(r.scratch)


def test_the_embedding_guide_example_compiles_against_an_export(exported, tmp_path):
    """docs/embedding.md's example, as written, against this export's kgen_fa.h."""
    from pathlib import Path
    out, _, _ = exported
    guide = (Path(__file__).resolve().parents[2] / "docs" / "embedding.md").read_text()
    example = guide.split("```c\n", 1)[1].split("```", 1)[0]
    (tmp_path / "example.c").write_text(example)
    done = subprocess.run(["cc", "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-I", str(out), "-c",
                           str(tmp_path / "example.c"), "-o", str(tmp_path / "example.o")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
