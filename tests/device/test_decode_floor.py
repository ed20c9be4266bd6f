"""lab/decode_floor.py (the load-only floor of a decode's split-k grid, and that floor with
the split-k tail): its kernels compile, the tail combines the splits right, and bad arguments
are refused naming them."""
import sys

import numpy as np
import pytest

from conftest import load_benchmark
from kgen import abi
from kgen.compile import compile_source


@pytest.fixture(scope="module")
def floor():
    return load_benchmark("decode_floor")


SMALL = dict(wg=64, unroll=2, rows=16, row_vec4=16, n_kv=64, splits=4, q_rows=4, hv4=32)


@pytest.mark.parametrize("kind", ["empty", "read", "combine"])
@pytest.mark.parametrize("read_v", [False, True])
def test_every_kind_of_kernel_compiles(floor, kind, read_v):
    text = floor.source(kind=kind, read_v=read_v, **SMALL)
    assert ("vsrc[j]" in text) == (read_v and kind != "empty")
    assert ("atomicAdd" in text) == (kind == "combine")
    assert len(compile_source(text, name="floor_test").spirv) > 300


def test_an_unknown_kind_is_refused(floor):
    with pytest.raises(ValueError, match="kind 'copy'"):
        floor.source(kind="copy", read_v=True, **SMALL)


@pytest.mark.parametrize("wg, lanes", [(64, 1), (256, 2), (1024, 8)])
def test_combine_lanes_spread_the_workgroup_over_the_outputs(floor, wg, lanes):
    assert floor.combine_lanes(wg, 4, 32) == lanes


@pytest.mark.parametrize("splits, wg", [(4, 64), (40, 64), (40, 256)])
def test_the_tail_combines_every_split_and_leaves_the_counters_zero(floor, splits, wg):
    """Two runs of the combine kernel (2 KV heads; 40 splits take three rounds of loads, the
    last one ragged; wg 256 gives two lanes per output): the combined rows are the (max,
    sum)-weighted mean of the partials each split wrote, and the arrival counters are zero
    again after each run."""
    from kgen.runtime import open_device
    dev = open_device()
    heads, s = 2, dict(SMALL, splits=splits, wg=wg, rows=-(-SMALL["n_kv"] // splits))
    rng = np.random.default_rng(1)
    k_data = rng.integers(0, 2**32, heads * s["n_kv"] * s["row_vec4"] * 4, dtype=np.uint32)
    outputs = s["q_rows"] * s["hv4"]
    bufs = [dev.buffer(k_data.nbytes), dev.buffer(heads * s["splits"] * outputs * 16),
            dev.buffer(heads * s["splits"] * s["q_rows"] * 8), dev.buffer(heads * outputs * 16), dev.buffer(16)]
    k, part, stats, reduced, arrivals = bufs
    try:
        k.write(k_data)
        arrivals.write(np.zeros(4, np.uint32))
        text = floor.source(kind="combine", read_v=False, **s)
        kernel = dev.pipeline(compile_source(text, name="floor_combine_test").spirv, name="floor_combine_test")
        step = (kernel, {abi.BINDING["k"]: k, abi.BINDING["v"]: k, abi.BINDING["out"]: part,
                         abi.BINDING["stats"]: stats, abi.BINDING["reduced"]: reduced,
                         abi.BINDING["split_arrivals"]: arrivals}, abi.pack_some(), (s["splits"], heads, 1))
        with dev.sequence([step]) as seq:
            for _ in range(2):
                reduced.write(np.full(heads * outputs * 4, np.nan, np.float32))
                seq.run(wait=True)
                p = np.frombuffer(part.read(), np.float32).reshape(heads, s["splits"], s["q_rows"], s["hv4"] * 4)
                ml = np.frombuffer(stats.read(), np.float32).reshape(heads, s["splits"], s["q_rows"], 2)
                w = np.exp(ml[..., 0] - ml[..., 0].max(axis=1, keepdims=True)) * ml[..., 1]
                want = (w[..., None] * p).sum(axis=1) / w.sum(axis=1)[..., None]
                got = np.frombuffer(reduced.read(), np.float32).reshape(want.shape)
                assert np.allclose(got, want, rtol=1e-5), np.abs(got - want).max()
                assert np.frombuffer(arrivals.read(8), np.uint32).tolist() == [0, 0]
        dev.drop_pipeline(kernel)
    finally:
        for b in bufs:
            b.close()


@pytest.mark.parametrize("argv, words", [
    (["P3 ", "--splits", "0"], "--splits"),
    (["P3 ", "--wg", "16"], "--wg"),
    (["P3 ", "--combine", "x"], "--combine"),
    (["P3 ", "--wg", "64,100000"], "--wg 100000"),
    (["P1 "], "decode case (Nq 1)"),
    (["nonesuch"], "nonesuch"),
])
def test_bad_arguments_are_refused_naming_them(floor, monkeypatch, capsys, argv, words):
    monkeypatch.setattr(sys, "argv", ["decode_floor.py", *argv])
    with pytest.raises(SystemExit):
        floor.main()
    assert words in capsys.readouterr().err
