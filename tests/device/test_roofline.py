"""The roofline: measured ceilings on lavapipe, their cache, the roofline math and `kgen roofline`."""
import json
import math

import pytest

from kgen import profiles
from kgen.timing import roofline
from kgen.cli import main
from kgen.compile import compile_source
from kgen.identity import DeviceIdentity
from kgen.timing.roofline import Roofline
from kgen.runtime import open_device
from kgen.variant import PathKind

SPIRV_MAGIC = b"\x03\x02\x23\x07"


@pytest.fixture(scope="module")
def device():
    return open_device(None)


@pytest.fixture(scope="module")
def measured(device):
    return roofline.measure(device)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """KGEN_CACHE_DIR in tmp_path: the roofline records land in tmp_path / "roofline"."""
    monkeypatch.setenv("KGEN_CACHE_DIR", str(tmp_path / "spirv"))
    return tmp_path / "roofline"


def record(key="k", **over) -> Roofline:
    fields = dict(device_key=key, device_name="test device", copy_gbps=1000.0,
                  matrix_tflops={"scalar_f32": 50.0, "coopmat1": 100.0}, measured_at="2026-01-01T00:00:00+00:00")
    return Roofline(**{**fields, **over})


def test_measure(device, measured):
    """On lavapipe: copy, scalar_f32 and scalar_f16; no coopmat entries. On a GPU: what it has."""
    assert measured.device_key == DeviceIdentity.of(device.caps).key
    assert measured.device_name == device.caps.name
    assert math.isfinite(measured.copy_gbps) and measured.copy_gbps > 0
    assert all(math.isfinite(v) and v > 0 for v in measured.matrix_tflops.values())
    assert set(measured.matrix_tflops) == set(roofline.MATRIX_KEYS) - set(roofline.unavailable(device.caps))
    assert (measured.peak_tflops(PathKind.COOPMAT1) is None) == (not device.caps.has_coopmat1)
    if device.caps.device_type == "cpu":
        assert set(measured.matrix_tflops) == {"scalar_f32", "scalar_f16"}
    assert Roofline.from_dict(json.loads(json.dumps(measured.to_dict()))) == measured


def test_cache_hit_does_not_measure(device, measured, cache, monkeypatch):
    calls = []
    monkeypatch.setattr(roofline, "measure", lambda dev, progress=None: calls.append(dev) or measured)
    first = roofline.ceilings(device)
    assert first == measured and len(calls) == 1
    assert (cache / f"{measured.device_key}.json").is_file()
    assert not list(cache.glob("*.tmp"))

    def refuse(dev, progress=None):
        raise AssertionError("a cached record must not be measured again")
    monkeypatch.setattr(roofline, "measure", refuse)
    assert roofline.ceilings(device) == measured
    with pytest.raises(AssertionError):
        roofline.ceilings(device, refresh=True)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": 1}', '{"format": 99}'])
def test_corrupt_cache_is_measured_again(device, measured, cache, monkeypatch, content):
    path = roofline.cache_path(measured.device_key)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    calls = []
    monkeypatch.setattr(roofline, "measure", lambda dev, progress=None: calls.append(dev) or measured)
    assert roofline.ceilings(device) == measured and len(calls) == 1
    assert roofline.load(measured.device_key) == measured  # rewritten whole


def test_cache_of_another_device_is_ignored(cache):
    roofline.save(record(key="other"))
    roofline.cache_path("mine").write_text(roofline.cache_path("other").read_text())
    assert roofline.load("other") == record(key="other")
    assert roofline.load("mine") is None


def test_fraction_memory_bound():
    # Intensity 1 FLOP/byte at 1000 GB/s: attainable 1 TFLOP/s, far under the 50 TFLOPS peak.
    r = record()
    assert r.fraction(1e9, 1e9, 2e-3, PathKind.SCALAR) == pytest.approx(0.5)
    # No FLOPs at all: the fraction of the copy bandwidth (4 GB in 8 ms of a 1 ms minimum).
    assert r.fraction(0, 4e9, 8e-3, PathKind.COOPMAT2) == pytest.approx(0.5)


def test_fraction_compute_bound():
    # 1 TFLOP over 1 MB: the peak bounds it. coopmat1 peak 100 TFLOPS -> 10 ms at best.
    r = record()
    assert r.fraction(1e12, 1e6, 0.04, PathKind.COOPMAT1) == pytest.approx(0.25)
    assert r.fraction(1e12, 1e6, 0.04, "scalar") == pytest.approx(0.5)  # scalar_f32: 50 TFLOPS
    # At the ridge point (intensity = peak / bandwidth = 100 FLOP/byte) both bounds agree.
    assert r.fraction(1e11, 1e9, 1e-3, PathKind.COOPMAT1) == pytest.approx(1.0)


def test_peak_and_errors():
    r = record()
    assert r.peak_tflops(PathKind.SCALAR) == 50.0 and r.peak_tflops("coopmat1") == 100.0
    assert r.peak_tflops(PathKind.COOPMAT2) is None and r.peak_tflops(PathKind.SCALAR, acc=16) is None
    with pytest.raises(ValueError, match="coopmat2"):
        r.fraction(1e9, 1e6, 1e-3, PathKind.COOPMAT2)
    with pytest.raises(ValueError, match="seconds"):
        r.fraction(1e9, 1e6, 0.0, PathKind.SCALAR)
    for bad in ({**r.to_dict(), "copy_gbps": -1.0}, {**r.to_dict(), "matrix_tflops": {"tensor": 1.0}},
                {k: v for k, v in r.to_dict().items() if k != "measured_at"}):
        with pytest.raises(ValueError):
            Roofline.from_dict(bad)


def test_coopmat_kernels_compile_for_h100():
    benches = roofline.kernels(profiles.H100)
    assert {b.key for b in benches} == set(roofline.MATRIX_KEYS)
    assert not roofline.unavailable(profiles.H100)
    for bench in benches:
        assert compile_source(bench.source, name=f"roofline_{bench.key}").spirv[:4] == SPIRV_MAGIC
    cm1 = [b for b in benches if b.key == "coopmat1"]
    assert all("16x16x16" in b.label and b.wg == 128 and b.subgroup == 32 for b in cm1)
    assert any("64x64x32, 128 threads" in b.label for b in benches if b.key == "coopmat2")
    assert compile_source(roofline.copy_source(), name="roofline_copy").spirv[:4] == SPIRV_MAGIC


def test_lavapipe_has_no_coopmat_kernels():
    keys = {b.key for b in roofline.kernels(profiles.LAVAPIPE)}
    assert keys == {"scalar_f32", "scalar_f16"}
    assert set(roofline.unavailable(profiles.LAVAPIPE)) == {"coopmat1", "coopmat2"}


def test_cli_measures_then_reads_the_cache(cache, capsys, monkeypatch):
    assert main(["roofline", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    first = Roofline.from_dict(data)
    assert first.copy_gbps > 0 and "scalar_f32" in first.matrix_tflops
    assert (cache / f"{first.device_key}.json").is_file()

    monkeypatch.setattr(roofline, "measure", lambda *a, **k: pytest.fail("cached: no measurement"))
    assert main(["roofline"]) == 0
    out = capsys.readouterr().out
    assert "GB/s" in out and "scalar_f32" in out and "TFLOPS" in out
    for key, reason in roofline.unavailable(open_device(None).caps).items():
        assert key in out and reason in out  # named as not measured, with why
    assert f"{first.copy_gbps:.1f}" in out


def test_cli_rejects_a_bad_device(cache, capsys):
    assert main(["roofline", "--device", "99"]) == 2
    assert "index" in capsys.readouterr().err


def test_a_failing_kernel_is_named_and_skipped(device, monkeypatch):
    from kgen.errors import CompileError
    real = roofline.measure_bench

    def bench(dev, b, budget=None):
        if b.key == "scalar_f16":
            raise CompileError(f"roofline_{b.key}", "no such instruction")
        return real(dev, b, budget)
    monkeypatch.setattr(roofline, "measure_bench", bench)
    monkeypatch.setattr(roofline, "measure_copy", lambda dev, budget=None: 1.0)
    said = []
    r = roofline.measure(device, progress=said.append)
    assert "scalar_f16" not in r.matrix_tflops and r.matrix_tflops["scalar_f32"] > 0
    assert any("scalar_f16" in line and "failed" in line for line in said)
