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
from typing import Callable

from .. import knobs
from ..caps import Caps
from ..errors import KgenError
from ..problem import BUCKETS, ProblemClass, mismatch
from ..space import why_invalid
from ..variant import Variant

LEVELS = ("exact", "nearest", "default")
_warned: set[str] = set()


@dataclass(frozen=True)
class Decision:
    variant: Variant
    splits: int             # the KV splits it was tuned with (split_kv/split_count follow, recipe.SPLITS)
    level: str              # one of LEVELS
    source: str             # the class key the decision was tuned for


# The nearest tuned class: bucket-index distances summed per tier, tiers compared in order, ties
# to the smaller class key. The query-row bucket decides the regime (decode vs prefill) and
# weighs most. kgen export renders the same tiers into the C lookup.
NEAREST_TIERS: tuple[tuple[str, ...], ...] = (("n_q",), ("n_kv", "gqa"))
BUCKET_FIELDS = {name: field for name, _, field in BUCKETS}


def distance(a: ProblemClass, b: ProblemClass) -> tuple[int, ...]:
    return tuple(sum(abs(getattr(a, BUCKET_FIELDS[d]) - getattr(b, BUCKET_FIELDS[d])) for d in tier)
                 for tier in NEAREST_TIERS)


def usable(uri: str, splits: int, kernel: str, problem: ProblemClass, caps: Caps,
           fits_call: Callable[[Variant, int], "str | None"] | None = None) -> Variant | None:
    """The variant of a stored decision if it may serve `problem` on `caps` today: it parses,
    computes the class (kgen.problem.mismatch), runs on the device (why_invalid), its kernel is
    still the one timed, and `fits_call(variant, splits)` (the call's own rules: its layouts,
    its query rows) has no objection."""
    from ..identity import is_current
    try:
        v = Variant.parse(uri)
    except (KgenError, ValueError):
        return None
    if mismatch(v, problem, splits) is not None or why_invalid(v, caps) is not None:
        return None
    if not is_current(uri, kernel):
        return None  # a template edit changed its kernel since it was timed
    if fits_call is not None and fits_call(v, splits) is not None:
        return None
    return v


def lookup(caps: Caps, problem: ProblemClass,
           fits_call: Callable[[Variant, int], "str | None"] | None = None) -> Decision | None:
    """The tuned decision for `problem` on this device and build (the exact class, else the
    nearest usable one), or None (use the heuristic default)."""
    path = knobs.db_path()
    if not path.exists():   # a plain attention call never creates the DB
        return None
    from ..identity import BuildIdentity, DeviceIdentity
    from ..tunedb import TuningDBError, open_default
    try:
        db = open_default(path)
        device, build = DeviceIdentity.of(caps), BuildIdentity.current()
        ranked = sorted(db.winners_like(device, build, problem), key=lambda w: (distance(problem, w.problem), w.problem.key))
        for w in ranked:
            if (v := usable(w.variant, w.splits, w.kernel, problem, caps, fits_call)) is not None:
                level = "exact" if w.problem == problem else "nearest"
                return Decision(v, w.splits, level, w.problem.key)
    except TuningDBError as exc:
        if str(path) not in _warned:
            _warned.add(str(path))
            warnings.warn(f"kgen: tuning DB unusable, using heuristic defaults: {exc}", stacklevel=3)
    return None
