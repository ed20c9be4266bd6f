"""Another device's decisions on this one (kgen.tools.cross_matrix): refused by the dispatcher,
timed by forcing them, beside this device's own run."""
from __future__ import annotations

import pytest

from kgen.identity import BuildIdentity, DeviceIdentity, kernel_digest
from kgen.models import parse_shape
from kgen.planning.probe import open_for_kernels
from kgen.space import default_variant
from kgen.tools import cross_matrix
from kgen.tunedb import Winner, open_default
from kgen.variant import Variant

OTHER = DeviceIdentity(vendor_id=0x10DE, device_id=0x2330, driver_id=4, driver_version=1,
                       pipeline_cache_uuid="0" * 32, name="Other GPU")


def export_of(device: DeviceIdentity, problem, variant, tmp_path) -> dict:
    """A `kgen db export` holding one decision of `device`."""
    with open_default(tmp_path / f"{device.key}.sqlite") as db:
        w = Winner(problem=problem, variant=variant.uri, splits=1, median_us=10.0, spread_us=0.1,
                   kernel=kernel_digest(variant.uri))
        db.set_winner(device, BuildIdentity.current(), w)
        return db.export_json()


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "here.sqlite"))   # this device: nothing tuned
    dev = open_for_kernels(None)
    case = parse_shape("1,4,4,1,256,64,64")
    problem = cross_matrix.kernel_class(case.fitted(dev.caps))
    default = default_variant(problem, dev.caps)
    # The other device's decision: a valid kernel here, but not the one this device would run.
    other = default.replace(bc=2 * default.bc)
    assert other != default
    return dev, case, problem, other


def test_the_other_devices_decision_is_refused_then_timed_by_force(setup, tmp_path):
    dev, case, problem, other = setup
    doc = export_of(OTHER, problem, other, tmp_path)
    assert cross_matrix.refused_here(doc, dev.caps)
    rows = cross_matrix.cross([case], doc, dev, repeats=3, warmup=1)
    row = rows[0]
    assert row.decision.variant == other.uri and row.decision.current
    assert Variant.parse(row.foreign.variant).replace(aligned=False) == other   # its aligned twin where Nkv allows
    assert row.foreign.chosen_by.startswith("forced: Other GPU's decision")
    assert row.own.variant != row.foreign.variant and row.own.chosen_by == "heuristic default"
    assert row.foreign.check.ok and row.own.check.ok
    d = row.as_dict()
    assert d["foreign_over_own"] == pytest.approx(d["foreign_us"] / d["own_us"])


def test_an_export_of_this_device_is_not_foreign(setup, tmp_path):
    dev, case, problem, other = setup
    doc = export_of(DeviceIdentity.of(dev.caps), problem, other, tmp_path)
    assert not cross_matrix.refused_here(doc, dev.caps)   # its own decisions do serve it
    with pytest.raises(ValueError, match="is this device"):
        cross_matrix.cross([case], doc, dev, repeats=3, warmup=1)


def test_an_export_of_several_devices_needs_one_named(setup, tmp_path):
    dev, case, problem, other = setup
    doc = export_of(OTHER, problem, other, tmp_path)
    second = export_of(DeviceIdentity(1, 2, 3, 4, "1" * 32, name="Third"), problem, other, tmp_path)
    doc["devices"] += second["devices"]
    with pytest.raises(ValueError, match="--cross-device"):
        cross_matrix.device_of(doc, None)
    assert cross_matrix.device_of(doc, OTHER.key)["name"] == "Other GPU"


def _bench(*words: str) -> int:
    from kgen.cli import main
    return main(["bench", *words])


def test_kgen_bench_cross_times_both_and_files_the_pairs(setup, tmp_path, capsys):
    import json
    dev, case, problem, other = setup
    export = tmp_path / "other.json"
    export.write_text(json.dumps(export_of(OTHER, problem, other, tmp_path)))
    out = tmp_path / "cross.json"
    assert _bench("--shape", "1,4,4,1,256,64,64", "--cross", str(export), "--repeats", "3", "--warmup", "1",
                  "--json", str(out)) == 0
    printed = capsys.readouterr().out
    assert "refuses them all" in printed and "Other GPU's decisions here:" in printed
    doc = json.loads(out.read_text())
    assert doc["refused_by_dispatcher"] is True and doc["foreign_device"]["name"] == "Other GPU"
    (row,) = doc["rows"]
    assert row["class"] == problem.key and row["foreign_variant"] == other.uri
    assert row["foreign_over_own"] == pytest.approx(row["foreign_us"] / row["own_us"])
    assert doc["foreign_over_own_geomean"] == pytest.approx(row["foreign_over_own"])
    assert "--cross" in doc["command"]


def test_kgen_bench_cross_refuses_bad_use_before_opening_a_device(setup, tmp_path, capsys):
    import json
    dev, case, problem, other = setup
    own = tmp_path / "own.json"
    own.write_text(json.dumps(export_of(DeviceIdentity.of(dev.caps), problem, other, tmp_path)))
    not_export = tmp_path / "results.json"
    not_export.write_text(json.dumps({"results": []}))
    shape = ("--shape", "1,4,4,1,256,64,64")
    cases = [((*shape, "--cross-device", "abc"), "give --cross EXPORT.json too"),
             (("--paged", "--cross", str(own)), "not with --paged"),
             ((*shape, "--cross", str(tmp_path / "missing.json")), "--cross"),
             ((*shape, "--cross", str(not_export)), "not a tuning export"),
             ((*shape, "--cross", str(own), "--cross-device", "nope"), "no device 'nope'"),
             ((*shape, "--cross", str(own)), "is this device")]
    for words, said in cases:
        assert _bench(*words) == 2, words
        assert said in capsys.readouterr().err, words
