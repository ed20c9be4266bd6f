"""`kgen db merge`: exports of several machines into one, for shipping one export to a fleet.

Records of different devices or builds never collide (each is keyed by its device's and build's
identity). Within one device and build, the same measurement from two files keeps the one with
more runs (then the later); two different winners of one class are a conflict: an error naming
the class, the device and both files, never a silent pick.
"""
from __future__ import annotations

from .records import Export, Measurement, Stored, TuningDBError
from .store import EXPORT_FORMAT, SCHEMA_VERSION


def merge(exports: list[tuple[str, dict]]) -> tuple[dict, dict[str, int]]:
    """(name, `kgen db export` document) pairs -> (the merged document, counts: devices, builds,
    measurements, winners, and `replaced`: measurements kept from another file)."""
    if len(exports) < 2:
        raise TuningDBError(f"db merge: {len(exports)} file(s) given; merge takes at least two")
    devices, builds = {}, {}
    measurements: dict[tuple, tuple[str, Stored]] = {}
    winners: dict[tuple, tuple[str, Stored]] = {}
    replaced = 0
    for name, data in exports:
        export = Export.from_record(data, name)
        devices.update(export.devices)
        builds.update(export.builds)
        for _, stored in export.measurements:
            held = measurements.get(stored.key)
            if held is None or _better(stored, held[1]):
                replaced += held is not None and held[1].to_record() != stored.to_record()
                measurements[stored.key] = (name, stored)
        for _, stored in export.winners:
            held = winners.get(stored.key)
            if held is not None and _decision(held[1]) != _decision(stored):
                device = devices[stored.device]
                raise TuningDBError(
                    f"db merge: class {stored.item.problem.key!r} on {device.name or device.key} (build "
                    f"{stored.build[:12]}) has two winners: {_decision(held[1])} in {held[0]}, "
                    f"{_decision(stored)} in {name}; drop one file or tune the class again on that machine")
            if held is None or stored.created_at > held[1].created_at:
                winners[stored.key] = (name, stored)
    out = {"format": EXPORT_FORMAT, "schema": SCHEMA_VERSION,
           "devices": [{"key": k, **v.as_dict()} for k, v in sorted(devices.items())],
           "builds": [{"key": k, **v.as_dict()} for k, v in sorted(builds.items())],
           "measurements": [s.to_record() for _, (_, s) in sorted(measurements.items())],
           "winners": [s.to_record() for _, (_, s) in sorted(winners.items())]}
    counts = {"devices": len(devices), "builds": len(builds), "measurements": len(measurements),
              "winners": len(winners), "replaced": replaced}
    return out, counts


def _better(new: Stored, held: Stored) -> bool:
    a, b = new.item, held.item
    assert isinstance(a, Measurement) and isinstance(b, Measurement)
    return (a.runs, new.created_at) > (b.runs, held.created_at)


def _decision(s: Stored) -> str:
    return f"{s.item.variant}@{s.item.splits}"

