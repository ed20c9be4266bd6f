"""Does per-device tuning matter: another device's decisions timed on this one, beside this
device's own, for the same cases (`kgen bench --cross EXPORT.json`).

The other device's decisions come from its `kgen db export`. Imported here they are never used
by the dispatcher (a decision serves only the device identity it was tuned on): `refused` says
the dispatcher was asked and gave none of them. So each is timed by forcing its variant and
split count (kgen.tools.bench.bench_case(forced=...)), on the class's exact decision, else the
one the other device's dispatcher would take (the nearest class, kgen.planning.dispatch).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import KgenError
from ..identity import DeviceIdentity, is_current
from ..planning import dispatch
from ..planning.recipe import SPLIT_COUNT, split_kv
from ..extent import evaluate
from ..problem import ProblemClass
from ..shapes import dense_strides, fold_for_layouts
from .suites import Case
from ..variant import Variant
from . import bench
from .bench import CaseResult, Choice


@dataclass(frozen=True)
class Foreign:
    """One decision of the other device: what its dispatcher would run for a class."""
    device: str          # its name
    problem: str         # the class it was tuned for (the call's own, or the nearest)
    variant: str
    splits: int
    current: bool        # its kernel digest is today's kernel (False: the template changed since)


@dataclass
class CrossRow:
    case: Case
    problem: str
    own: CaseResult
    foreign: CaseResult | None
    decision: Foreign | None
    note: str = ""

    @property
    def foreign_over_own(self) -> float | None:
        a, b = _us(self.foreign), _us(self.own)
        return None if a is None or b is None else a / b

    def as_dict(self) -> dict:
        d = self.decision
        return {"case": self.case.name, "class": self.problem, "own_us": _us(self.own),
                "own_variant": self.own.variant, "own_chosen_by": self.own.chosen_by,
                "foreign_us": _us(self.foreign), "foreign_variant": d and d.variant,
                "foreign_splits": d and d.splits, "foreign_class": d and d.problem,
                "foreign_current": d and d.current, "foreign_over_own": self.foreign_over_own,
                "foreign_nmse": self.foreign.check.nmse if self.foreign and self.foreign.check else None,
                "note": self.note or None}


def _us(r: CaseResult | None) -> float | None:
    return r.gpu.median_us if r is not None and r.error is None and r.gpu is not None else None


def device_of(doc: dict, device_key: str | None) -> dict:
    """The export's device record: the only one, or the one `device_key` names (a ValueError
    names the choices otherwise)."""
    devices = doc.get("devices") or []
    if device_key is not None:
        picked = [d for d in devices if d.get("key") == device_key]
    else:
        picked = devices
    if len(picked) != 1:
        listed = ", ".join(f"{d.get('key')} ({d.get('name')})" for d in devices) or "none"
        raise ValueError(f"--cross: the export holds devices {listed}; "
                         + ("pass --cross-device KEY to pick one" if device_key is None
                            else f"no device {device_key!r} among them"))
    return picked[0]


def kernel_class(case: Case) -> ProblemClass:
    """The class the dispatcher looks up for `case` (GQA folded where dense layouts allow)."""
    s = case.shapes()
    kernel, _, _ = fold_for_layouts(s, dense_strides(s.n_q, s.heads_q, s.head_k),
                                    dense_strides(s.n_q, s.heads_q, s.head_v))
    return kernel.problem()


def foreign_decision(doc: dict, device: dict, problem: ProblemClass) -> Foreign | None:
    """The other device's decision for `problem`: its exact class, else its nearest one with the
    same head sizes, types, features and precision, as its dispatcher ranks them."""
    rows = []
    for w in doc.get("winners") or []:
        if w.get("device") != device.get("key"):
            continue
        try:
            p = ProblemClass.parse(w["problem"])
        except (KeyError, ValueError):
            continue
        same = (p.head_k, p.head_v, p.k_type, p.v_type, p.key_features, p.acc) == (
            problem.head_k, problem.head_v, problem.k_type, problem.v_type, problem.key_features, problem.acc)
        if same:
            rows.append((dispatch.distance(problem, p), p.key, w))
    if not rows:
        return None
    _, key, w = min(rows, key=lambda r: (r[0], r[1]))
    return Foreign(device.get("name", "?"), key, w["variant"], int(w["splits"]), is_current(w["variant"], w.get("kernel", "")))


def refused_here(doc: dict, caps) -> bool:
    """Whether this device's dispatcher finds none of the export's decisions once they are
    imported (into a scratch DB): it asks the DB as kgen.planning.dispatch.lookup does, for this
    device and build. True is the rule that a decision serves its own device only."""
    from ..identity import BuildIdentity
    from ..tunedb import open_default
    here, build = DeviceIdentity.of(caps), BuildIdentity.current()
    with tempfile.TemporaryDirectory() as tmp:
        with open_default(Path(tmp) / "cross.sqlite") as db:
            db.import_json(doc)
            for w in doc.get("winners") or []:
                try:
                    problem = ProblemClass.parse(w["problem"])
                except (KeyError, ValueError):
                    continue
                if db.winners_like(here, build, problem):
                    return False
    return True


def cross(cases: list[Case], doc: dict, dev, *, device_key: str | None = None, repeats: int = 100,
          warmup: int = 10, roofline=None, progress=None) -> list[CrossRow]:
    """Each case run as this device's dispatcher decides, then with the other device's decision
    forced. `progress(case, which, result | None)` before (None) and after each run."""
    device = device_of(doc, device_key)
    if DeviceIdentity.of(dev.caps).key == device.get("key"):
        raise ValueError(f"--cross: the export's device {device.get('name')} is this device; pass another "
                         "device's export")
    rows = []
    for case in cases:
        problem = kernel_class(case.fitted(dev.caps))
        if progress:
            progress(case, "own", None)
        own = bench.bench_case(case, dev, repeats=repeats, warmup=warmup, roofline=roofline, torch=False)
        if progress:
            progress(case, "own", own)
        decision = foreign_decision(doc, device, problem)
        row = CrossRow(case, problem.key, own, None, decision)
        if decision is None:
            row.note = f"{device.get('name')} has no decision for this class or a neighbour"
            rows.append(row)
            continue
        try:
            v = Variant.parse(decision.variant)
        except (KgenError, ValueError) as exc:
            row.note = f"{decision.variant} does not parse here: {exc}"
            rows.append(row)
            continue
        dims = {"n_kv": case.fitted(dev.caps).n_kv, "splits": decision.splits}
        dims["split_kv"] = evaluate(split_kv(v.bc), dims)
        choice = Choice(v, decision.splits, evaluate(SPLIT_COUNT, dims))
        if progress:
            progress(case, "foreign", None)
        row.foreign = bench.bench_case(case, dev, repeats=repeats, warmup=warmup, roofline=roofline, torch=False,
                                       forced=(choice, f"forced: {decision.device}'s decision for {decision.problem}"))
        if progress:
            progress(case, "foreign", row.foreign)
        if not decision.current:
            row.note = "its kernel changed since that device timed it (another build)"
        rows.append(row)
    return rows
