"""lab/prefill_floor.py (the load-only floor of a prefill pass's memory traffic): the
kernels it writes compile and run, and bad arguments are refused naming them."""
import sys

import numpy as np
import pytest

from conftest import load_benchmark
from kgen.compile import compile_source


@pytest.fixture(scope="module")
def floor():
    return load_benchmark("prefill_floor")


SMALL = dict(wg=64, bc=16, br=32, k_vec4=16, v_vec4=16, n_kv=64, row_tiles=2)


@pytest.mark.parametrize("q_reread, stage, stagger", [(0, 0, 0), (1, 1, 0), (0, 1, 1), (1, 0, 1)])
def test_every_kind_of_kernel_compiles(floor, q_reread, stage, stagger):
    text = floor.source(**SMALL, q_reread=bool(q_reread), stage=bool(stage), stagger=bool(stagger))
    assert ("shared uvec4 sh[" in text) == bool(stage)
    assert len(compile_source(text, name="floor_test").spirv) > 500


def test_v_from_k_makes_tiles_of_k_rows_only(floor):
    with_v = floor.source(**SMALL, q_reread=True, stage=True, stagger=False)
    text = floor.source(**dict(SMALL, v_vec4=0), q_reread=True, stage=True, stagger=False)
    # 16 rows of 16 16-byte elements, K's alone: half the tile of K and V.
    assert "shared uvec4 sh[256];" in text and "shared uvec4 sh[512];" in with_v
    assert len(compile_source(text, name="floor_test").spirv) > 500


def test_a_kernel_runs_and_is_timed(floor):
    from kgen.runtime import open_device
    dev = open_device()
    rng = np.random.default_rng(0)
    sizes = (2 * 32 * 16 * 16, 64 * 16 * 16, 64 * 16 * 16)   # Q of 2 row tiles, K and V of 64 rows
    inputs = []
    for _ in range(2):
        bufs = [dev.buffer(n) for n in sizes]
        for b, n in zip(bufs, sizes):
            b.write(rng.integers(0, 2**32, n // 4, dtype=np.uint32))
        inputs.append(tuple(bufs))
    out = dev.buffer(1 << 12)
    try:
        text = floor.source(**SMALL, q_reread=True, stage=True, stagger=True)
        us = floor.time_kernel(dev, text, "floor_test", inputs, out, (2, 1, 1), runs=4)
        assert 0.0 < us < 1e6
    finally:
        for b in (*(x for t in inputs for x in t), out):
            b.close()


@pytest.mark.parametrize("argv, words", [
    (["P1 ", "--bc", "32,x"], "--bc"),
    (["P1 ", "--wg", "0"], "--wg"),
    (["P1 ", "--wg", "100000"], "--wg 100000"),
    (["P5 "], "f16 K and V only"),
    (["nonesuch"], "nonesuch"),
])
def test_bad_arguments_are_refused_naming_them(floor, monkeypatch, capsys, argv, words):
    monkeypatch.setattr(sys, "argv", ["prefill_floor.py", *argv])
    with pytest.raises(SystemExit):
        floor.main()
    assert words in capsys.readouterr().err
