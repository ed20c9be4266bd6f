"""The dispatcher's lookup: tuned decision for the exact class -> the nearest tuned bucket with the
same head sizes, KV types, features and precision -> the heuristic default (space.default_variant).

A stored decision is advice, never trusted blindly: it must parse, pass why_invalid on this
device, compute this class's features and name a kernel whose source is still the one it timed,
or it is skipped (a stale DB costs speed, never correctness). A DB that cannot be read gives one
warning and the heuristic default.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from . import knobs
from .caps import Caps
from .errors import KgenError
from .problem import ProblemClass
from .space import why_invalid
from .variant import Variant

LEVELS = ("exact", "nearest", "default")
_warned: set[str] = set()


@dataclass(frozen=True)
class Decision:
    variant: Variant
    splits: int | None      # None: let the plan's heuristic count splits for the shape
    level: str              # one of LEVELS
    source: str             # the class key the decision was tuned for, or "heuristic"


def _usable(w, problem: ProblemClass, caps: Caps) -> Variant | None:
    """The variant of stored winner `w` if it may serve `problem` on `caps` today."""
    from .identity import is_current
    try:
        v = Variant.parse(w.variant)
    except (KgenError, ValueError):
        return None
    if why_invalid(v, caps) is not None:
        return None
    if tuple(f for f in v.features if f != "split_k") != problem.features:
        return None
    if v.v_in_k and not problem.v_in_k:
        return None  # it reads V from K's tile
    if not is_current(w.variant, w.kernel):
        return None  # a template edit changed its kernel since it was timed
    return v


def _distance(a: ProblemClass, b: ProblemClass) -> tuple:
    # The query-row bucket decides the regime (decode vs prefill) and weighs most.
    return (abs(a.nq_bucket - b.nq_bucket), abs(a.nkv_bucket - b.nkv_bucket) + abs(a.gqa_bucket - b.gqa_bucket), b.key)


def lookup(caps: Caps, problem: ProblemClass) -> Decision | None:
    """The tuned decision for `problem` on this device and build, or None (use the heuristic)."""
    path = knobs.db_path()
    if not path.exists():   # a plain attention call never creates the DB
        return None
    from .identity import BuildIdentity, DeviceIdentity
    from .tunedb import TuningDBError, open_default
    try:
        db = open_default(path)
        device, build = DeviceIdentity.of(caps), BuildIdentity.current()
        exact = db.winner(device, build, problem)
        if exact is not None and (v := _usable(exact, problem, caps)) is not None:
            return Decision(v, exact.splits, "exact", problem.key)
        for w in sorted(db.winners_like(device, build, problem), key=lambda w: _distance(problem, w.problem)):
            if (v := _usable(w, problem, caps)) is not None:
                return Decision(v, None, "nearest", w.problem.key)
    except TuningDBError as exc:
        if str(path) not in _warned:
            _warned.add(str(path))
            warnings.warn(f"kgen: tuning DB unusable, using heuristic defaults: {exc}", stacklevel=3)
    return None
