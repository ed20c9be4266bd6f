"""KGEN_DEBUG levels, device-free: 2 prints one line per dispatch of a plan run (uri, grid, GPU
us, and GB/s / TFLOPS for the FA step); 4 writes each shader's GLSL under the cache's glsl/."""
from __future__ import annotations

import re

import numpy as np
import pytest

from kgen import knobs, profiles
from kgen.compile import dump_glsl
from kgen.kvtensor import layout_of
from kgen.planning.choose import choose_variant, split_values
from kgen.planning.plan import Plan
from kgen.planning.recipe import recipe
from kgen.shapes import shapes_of

Q = np.zeros((1, 2, 3, 64), np.float32)
K = np.zeros((1, 1, 70, 64), np.float32)
MASK = np.zeros((3, 70), np.float32)


class _Sequence:
    def __init__(self, times):
        self.times = times

    def run(self, wait=True):
        return list(self.times)


def _plan(times, split_k=None) -> Plan:
    """A Plan as _build leaves it, with a fake recorded sequence that reports `times`."""
    p = Plan.__new__(Plan)
    p.shapes = p.kernel_shapes = s = shapes_of(Q, K, K, mask=MASK)
    p.kv_layouts = {"k": layout_of(None, s.k_type, K.shape), "v": layout_of(None, s.v_type, K.shape)}
    p.v_in_k = False
    p.variant, splits, _ = choose_variant(s, profiles.LAVAPIPE, None, split_k, tuned=False)
    p.split_kv, p.splits = split_values(s.n_kv, splits, p.variant.bc)
    p.recipe = recipe(p.variant)
    dims = p.dims()
    p.steps = [(None, {}, b"", step.groups(dims), i > 0 and not step.barrier) for i, step in enumerate(p.recipe.steps)]
    p._sequence = _Sequence(times)
    return p


def test_the_knob_documents_its_levels():
    doc = knobs.KNOBS["KGEN_DEBUG"].doc
    assert all(f"{n} = " in doc for n in (1, 2, 4))


@pytest.mark.parametrize("level,printed", [("0", False), ("1", False), ("2", True), ("3", True), ("4", True)])
def test_level_2_and_up_print_each_dispatch(monkeypatch, capsys, level, printed):
    monkeypatch.setenv("KGEN_DEBUG", level)
    p = _plan([40.0, 2.0], split_k=2)
    assert [s.role for s in p.recipe.steps] == ["fa", "reduce"]
    assert p.run_device() == 42.0
    out = capsys.readouterr().out.splitlines()
    if not printed:
        assert out == []
        return
    fa, red = p.recipe.steps
    assert len(out) == 2
    grid = "x".join(map(str, p.steps[0][3]))
    m = re.fullmatch(rf"kgen: dispatch {fa.name} grid {grid} 40\.0 us ([\d.e+-]+) GB/s ([\d.e+-]+) TFLOPS", out[0])
    assert m, out[0]
    s = p.shapes
    nbytes = 1 * 2 * 3 * (64 + 64) * 4 + 2 * p.kv_layouts["k"].nbytes + 2 * 3 * 70
    flops = 2 * 1 * 2 * 3 * 70 * (s.head_k + s.head_v)
    assert float(m[1]) == pytest.approx(nbytes / 40e3, rel=1e-3)
    assert float(m[2]) == pytest.approx(flops / 40e6, rel=1e-3)
    assert out[1] == f"kgen: dispatch {red.name} grid {'x'.join(map(str, p.steps[1][3]))} 2.0 us"


def test_untimed_and_joined_steps_say_so(monkeypatch, capsys):
    monkeypatch.setenv("KGEN_DEBUG", "2")
    p = _plan([])
    assert p.run_device() == 0.0
    assert capsys.readouterr().out.endswith(" (untimed)\n")
    p = _plan([5.0, 0.0], split_k=2)
    p.steps[1] = p.steps[1][:4] + (True,)   # as if recorded beside the FA step
    p.run_device()
    assert capsys.readouterr().out.splitlines()[1].endswith("(timed with the step before)")


def test_glsl_dump_is_content_addressed_under_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KGEN_CACHE_DIR", str(tmp_path / "spirv"))
    assert knobs.glsl_dir() == tmp_path / "glsl"
    path = dump_glsl("void main() {}\n", name="fa_x")
    assert path.parent == tmp_path / "glsl" and re.fullmatch(r"fa_x-[0-9a-f]{12}\.comp", path.name)
    assert path.read_text() == "void main() {}\n"
    assert dump_glsl("void main() {}\n", name="fa_x") == path          # same source, same file
    assert dump_glsl("void main() { }\n", name="fa_x") != path
    assert not list((tmp_path / "glsl").glob(".*.tmp"))                 # no temporaries left
    step = _plan([]).recipe.fa
    assert step.dump_glsl().read_text() == step.source()
