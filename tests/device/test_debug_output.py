"""KGEN_DEBUG on a real plan (default device): 1 the plan line, 2 adds a line per dispatch, 4
adds the path of each shader's rendered GLSL; and list inputs run as arrays do."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import kgen
from kgen import knobs

RNG = np.random.default_rng(1)
Q = RNG.standard_normal((1, 2, 2, 64)).astype(np.float32)
K = RNG.standard_normal((1, 1, 40, 64)).astype(np.float32)
V = RNG.standard_normal((1, 1, 40, 64)).astype(np.float32)


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KGEN_CACHE_DIR", str(tmp_path / "spirv"))


def _run(monkeypatch, capsys, level: str, **kw) -> tuple[list[str], "kgen.planning.plan.Plan"]:
    monkeypatch.setenv("KGEN_DEBUG", level)
    with kgen.plan(Q, K, V, **kw) as p:
        p(Q, K, V)
    return capsys.readouterr().out.splitlines(), p


@pytest.mark.parametrize("level", ["1", "2", "4"])
def test_each_level_prints_its_lines_and_those_below(monkeypatch, capsys, level):
    out, p = _run(monkeypatch, capsys, level, split_k=2)
    steps = p.recipe.steps
    plans = [line for line in out if line.startswith("kgen: plan ")]
    glsl = [line for line in out if line.startswith("kgen: glsl ")]
    dispatches = [line for line in out if line.startswith("kgen: dispatch ")]
    assert len(plans) == 1 and p.variant.uri in plans[0]
    assert len(dispatches) == (len(steps) if int(level) >= 2 else 0)
    assert len(glsl) == (len(steps) if int(level) >= 4 else 0)
    assert len(out) == len(plans) + len(glsl) + len(dispatches)
    for line, step in zip(dispatches, steps):
        assert line.startswith(f"kgen: dispatch {step.name} grid ")
        if step.role == "fa" and " us " in line:
            assert re.search(r" [\d.]+ us [\d.e+-]+ GB/s [\d.e+-]+ TFLOPS$", line), line
    for line, step in zip(glsl, steps):
        name, path = line.split()[2:]
        assert name == step.name
        path = Path(path)
        assert path.parent == knobs.glsl_dir() and path.read_text() == step.source()


def test_lists_run_as_arrays_do():
    want = kgen.attention(Q, K, V)
    got = kgen.attention(Q.tolist(), K.tolist(), V.tolist())
    np.testing.assert_array_equal(got, want)
    with kgen.plan(Q, K, V) as p:
        np.testing.assert_array_equal(p(Q.tolist(), tuple(K.tolist()), V.tolist()), want)
        with pytest.raises(ValueError, match=r"^v\b"):
            p(Q, K, "v")
